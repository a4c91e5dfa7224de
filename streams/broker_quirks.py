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

``noida-aborted-txns``: a fetch's ``aborted_transactions`` must list the aborted transactions that reach into the
fetched range; noida 0.2.3 also lists those whose abort marker lies before the fetch offset. A read_committed
aiokafka consumer then takes the producer for aborted at its next transactional batch and, with no abort marker
of it in this fetch to end that, drops the producer's next *committed* transaction: a live consumer that had
read past the abort never saw the next committed events (tests/broker pins it). The fix: before aiokafka
filters a fetch, an entry that began before the fetch offset is dropped when the producer's first marker in the
fetch is a commit (on a correct broker it is always that transaction's abort marker, so the entries stay as they
are there). When the fetch holds none of its markers, the fetch is cut before the producer's first batch so that
the next one starts there and holds more (on any broker this costs one more fetch per such producer, nothing
else); a fetch that starts at such a batch keeps the entry (Kafka's meaning). noida ignores the fetch size limits
(it answered one fetch with 63 MB under a 300 kB limit: found by review), so on noida the cut and that last case
do not arise.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

from tidewater.settings import BROKER_QUIRKS as QUIRKS, Settings

log = logging.getLogger(__name__)

# the work-around each embedded broker needs (`tidewater up` and the integration tests set it)
QUIRKS_BY_BROKER = {"tansu": "tansu-highwater", "noida": "noida-fetch-wait,noida-aborted-txns"}
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


class Batch(NamedTuple):
    """What the abort filter reads of a fetched record batch."""

    base: int
    next: int
    producer: int | None
    transactional: bool
    marker: str | None  # "commit" / "abort" for a control batch


def live_aborts(batches: Sequence[Batch], aborted: Sequence[tuple[int, int]], fetch_offset: int
                ) -> tuple[list[tuple[int, int]], int | None]:
    """(the fetch's aborted-transaction entries without those that ended before ``fetch_offset``, the offset to
    cut the fetch at or None); see ``noida-aborted-txns`` above. A producer has one transaction open at a time,
    so for an entry that began before the fetch offset its producer's first marker in the fetch says which it is:
    a commit, and the entry is one noida should not have sent; an abort, and it is the transaction that marker
    ends."""
    earlier = {producer for producer, first in aborted if first < fetch_offset}
    if not earlier:
        return list(aborted), None
    first_marker: dict[int, str] = {}
    first_data: dict[int, int] = {}
    for batch in batches:
        if batch.next <= fetch_offset or batch.producer not in earlier or batch.producer in first_marker:
            continue
        if batch.marker is not None:
            first_marker[batch.producer] = batch.marker
        elif batch.transactional:
            first_data.setdefault(batch.producer, batch.base)
    ended = {producer for producer, marker in first_marker.items() if marker == "commit"}
    # a producer with none of its markers here: cut before its first batch, unless that is the fetch's first
    # (cutting there would fetch the same again; another such producer's batch at the head does not stop the cut)
    head = max(next((b.base for b in batches if b.next > fetch_offset), fetch_offset), fetch_offset)
    cut = min((base for producer, base in first_data.items() if producer not in first_marker and base > head),
              default=None)
    kept = [(producer, first) for producer, first in aborted if not (first < fetch_offset and producer in ended)]
    return kept, cut


def _batches(data: bytes, records_type: Any, *, markers: bool = True) -> Iterator[tuple[Batch, Any]]:
    """The batches of a fetch's bytes, each from a walk of its own: reading a control batch's marker consumes its
    record, so batches whose markers were read must never reach aiokafka (its filter reads them again and finds
    none: found by review)."""
    from aiokafka.record.control_record import ABORT_MARKER, COMMIT_MARKER, ControlRecord

    records = records_type(data)
    while records.has_next():
        batch = records.next_batch()
        marker = None
        if markers and batch.is_control_batch:
            control = ControlRecord.parse(next(batch).key)
            marker = "abort" if control == ABORT_MARKER else "commit" if control == COMMIT_MARKER else "other"
        yield Batch(batch.base_offset, batch.next_offset, batch.producer_id, bool(batch.is_transactional),
                    marker), batch


def kept_records(records_type: Any) -> Any:
    """aiokafka's MemoryRecords (``records_type``), keeping its bytes for a second look."""

    class KeptRecords:
        __slots__ = ("data", "_records")
        _tidewater_wraps = records_type

        def __init__(self, data: bytes) -> None:
            self.data, self._records = data, records_type(data)

        def has_next(self) -> bool:
            return self._records.has_next()

        def next_batch(self) -> Any:
            return self._records.next_batch()

        def size_in_bytes(self) -> int:
            return self._records.size_in_bytes()

    return KeptRecords


class CutRecords:
    """The batches of a fetch that begin before ``cut``, untouched (a walk of their own)."""

    def __init__(self, data: bytes, cut: int, records_type: Any) -> None:
        self._left = [batch for info, batch in _batches(data, records_type, markers=False) if info.base < cut]
        self._left.reverse()

    def has_next(self) -> bool:
        return bool(self._left)

    def next_batch(self) -> Any:
        return self._left.pop()


def settled_partition_records(partition_records: Any, records_type: Any) -> Any:
    """aiokafka's ``PartitionRecords`` with the fetch's aborted-transaction entries settled first."""
    from aiokafka.consumer.fetcher import READ_COMMITTED

    class SettledPartitionRecords(partition_records):  # type: ignore[misc, valid-type]
        _tidewater_unsettled = (records_type, partition_records)

        def __init__(self, tp: Any, records: Any, aborted: Any, fetch_offset: int, *rest: Any) -> None:
            data = getattr(records, "data", None)
            if (aborted and data is not None and rest and rest[-1] == READ_COMMITTED
                    and any(first < fetch_offset for _, first in aborted)):
                try:
                    aborted, cut = live_aborts([info for info, _ in _batches(data, records_type)], aborted,
                                               fetch_offset)
                    if cut is not None:
                        records = CutRecords(data, cut, records_type)
                except Exception:  # a corrupt batch: aiokafka's own iterator raises it for this partition alone
                    log.debug("could not settle the aborted transactions of a fetch of %s", tp, exc_info=True)
            super().__init__(tp, records, aborted, fetch_offset, *rest)

    return SettledPartitionRecords


def unpatched_fetcher() -> tuple[Any, Any]:
    """aiokafka's own (MemoryRecords, PartitionRecords), whether or not ``settle_noida_aborts`` has wrapped them
    (wholly, or only MemoryRecords where PartitionRecords was put back)."""
    from aiokafka.consumer import fetcher

    settled = getattr(fetcher.PartitionRecords, "_tidewater_unsettled", None)
    if settled is not None:
        return settled
    return getattr(fetcher.MemoryRecords, "_tidewater_wraps", fetcher.MemoryRecords), fetcher.PartitionRecords


def settle_noida_aborts() -> None:
    """Install ``noida-aborted-txns`` in every aiokafka consumer of this process (the fetcher module's names,
    looked up per fetch; ``unpatched_fetcher`` gives the originals back). Idempotent, and never wraps its own
    classes again (a second install over half-restored names recursed without end: found by review)."""
    from aiokafka.consumer import fetcher

    if hasattr(fetcher.PartitionRecords, "_tidewater_unsettled"):
        return
    records_type, partition_records = unpatched_fetcher()
    fetcher.PartitionRecords = settled_partition_records(partition_records, records_type)
    fetcher.MemoryRecords = kept_records(records_type)


def install_process_wide(quirks: frozenset[str]) -> None:
    """The quirks that patch aiokafka for every consumer of this process (the worker's, ``record``'s)."""
    if "noida-fetch-wait" in quirks:
        pace_fetches()
    if "noida-aborted-txns" in quirks:
        settle_noida_aborts()


def install(app: Any, settings: Settings) -> None:
    """The quirks of ``TIDEWATER_BROKER_QUIRKS`` in the worker."""
    quirks = settings.quirks
    install_process_wide(quirks)
    if "tansu-highwater" in quirks:
        consumer = app.consumer
        reported_highwaters = consumer.highwaters

        async def highwaters(*partitions: Any) -> Mapping[Any, int]:
            return await true_end_offsets(settings, await reported_highwaters(*partitions))

        consumer.highwaters = highwaters
