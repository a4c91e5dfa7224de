"""Work-arounds for defects of embedded brokers, enabled by ``TIDEWATER_BROKER_QUIRKS``.

``tansu-highwater``: Tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1, so after a
multi-record batch the high watermark is too low (tests/broker pins it). Faust's changelog recovery reads up to
that high watermark: it stops early (lost updates with memory://) or finds its persisted offset above it
(``ConsistencyError`` with rocksdb://). The fix: read from the reported end - 1 to the real end of each
partition and report that instead. Only recovery asks for high watermarks, so the extra fetch costs nothing
on the hot path, and producer batching can stay on.

``noida-fetch-wait``: noida answers a fetch that finds no new records at once, ignoring ``fetch.max.wait.ms``.
An idle aiokafka consumer then sends about 1,200 fetches/s and burns three quarters of a core (on Tansu: 10/s,
0.01 core). In the live bench this spin took the worker's CPU and the broker's with it. The fix: fetches to a
node are spaced at least ``FETCH_PACE_S`` apart (aiokafka's ``Fetcher``, process-wide). Records still reach the
consumer as soon as a response carries them; only the next request waits, so an event waits at most that much
longer.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

from tidewater.settings import BROKER_QUIRKS as QUIRKS, Settings
# the work-around each embedded broker needs (`tidewater up` and the integration tests set it)
QUIRKS_BY_BROKER = {"tansu": "tansu-highwater", "noida": "noida-fetch-wait"}
FETCH_PACE_S = 0.005


async def true_end_offsets(settings: Settings, reported: Mapping[Any, int], *, settle_s: float = 0.3,
                           first_data_s: float = 30.0) -> dict:
    """The real end of each partition of ``reported`` (Tansu's ListOffsets answers), read from the reported end
    - 1: a record is always there. The read ends ``settle_s`` after the last records, but only once every probed
    partition has answered with its records (or ``first_data_s`` has passed): the settle window used to start
    before the first fetch, so a slow first answer (a new connection on a loaded machine) returned the reported,
    too-low ends, and the restore stopped short (found by review)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka_config import aiokafka_kwargs

    result = {tp: value for tp, value in reported.items()}
    probe = {tp: value for tp, value in reported.items() if value and value > 0}
    if not probe:
        return result
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(settings), enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        await consumer.start()  # inside the try: a failed start still closes the client's connections
        tps = {tp: TopicPartition(tp.topic, tp.partition) for tp in probe}
        consumer.assign(list(tps.values()))
        for tp, value in probe.items():
            consumer.seek(tps[tp], value - 1)
        by_key = {(tp.topic, tp.partition): tp for tp in probe}
        unanswered = set(by_key)
        last_data = started = time.monotonic()

        def reading() -> bool:  # some partition has not answered yet, or records came within settle_s
            now = time.monotonic()
            return bool(unanswered) and now - started < first_data_s or now - last_data < settle_s

        while reading():
            batch = await consumer.getmany(timeout_ms=50, max_records=10000)
            for ktp, messages in batch.items():
                tp = by_key.get((ktp.topic, ktp.partition))
                if messages and tp is not None:
                    last_data = time.monotonic()
                    unanswered.discard((ktp.topic, ktp.partition))
                    result[tp] = max(result[tp], messages[-1].offset + 1)
    finally:
        await consumer.stop()
    return result


def pace_fetches(min_interval_s: float = FETCH_PACE_S) -> None:
    """Space each node's fetch requests at least ``min_interval_s`` apart, in every aiokafka consumer of this
    process (see ``noida-fetch-wait`` above). Idempotent."""
    from aiokafka.consumer.fetcher import Fetcher

    original = getattr(Fetcher, "_tidewater_unpaced", None) or Fetcher._proc_fetch_request

    async def paced(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        started = time.monotonic()
        result = await original(self, assignment, node_id, request)  # records are handed over in here
        rest = min_interval_s - (time.monotonic() - started)
        if rest > 0:
            try:
                await asyncio.sleep(rest)  # the next request to this node waits; this one's records do not
            except asyncio.CancelledError:
                # Fetcher.close() and re-assignment cancel pending fetches and then await them expecting no
                # error, as the original returns normally when cancelled: do the same
                return result
        return result

    Fetcher._tidewater_unpaced = original
    Fetcher._proc_fetch_request = paced


def install(app: Any, settings: Settings, quirks: set[str]) -> None:
    if "noida-fetch-wait" in quirks:
        pace_fetches()
    if "tansu-highwater" in quirks:
        consumer = app.consumer
        reported_highwaters = consumer.highwaters

        async def highwaters(*partitions: Any) -> Mapping[Any, int]:
            return await true_end_offsets(settings, await reported_highwaters(*partitions))

        consumer.highwaters = highwaters
