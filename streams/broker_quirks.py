"""Work-arounds for defects of embedded brokers, enabled by ``TIDEWATER_BROKER_QUIRKS``.

``tansu-highwater``: Tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1, so after a
multi-record batch the high watermark is too low (tests/broker pins it). Faust's changelog recovery reads up to
that high watermark: it stops early (lost updates with memory://) or finds its persisted offset above it
(``ConsistencyError`` with rocksdb://). The fix: read from the reported end - 1 to the real end of each
partition and report that instead. Only recovery asks for high watermarks, so the extra fetch costs nothing
on the hot path, and producer batching can stay on.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from tidewater.settings import Settings

QUIRKS = ("tansu-highwater",)


async def true_end_offsets(settings: Settings, reported: Mapping[Any, int], *, settle_s: float = 0.3) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka_config import aiokafka_kwargs

    result = {tp: value for tp, value in reported.items()}
    probe = {tp: value for tp, value in reported.items() if value and value > 0}
    if not probe:
        return result
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(settings), enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = {tp: TopicPartition(tp.topic, tp.partition) for tp in probe}
        consumer.assign(list(tps.values()))
        for tp, value in probe.items():
            consumer.seek(tps[tp], value - 1)
        last_data = time.monotonic()
        while time.monotonic() - last_data < settle_s:
            batch = await consumer.getmany(timeout_ms=50, max_records=10000)
            for ktp, messages in batch.items():
                if messages:
                    last_data = time.monotonic()
                    for tp in probe:
                        if tp.topic == ktp.topic and tp.partition == ktp.partition:
                            result[tp] = max(result[tp], messages[-1].offset + 1)
    finally:
        await consumer.stop()
    return result


def install(app: Any, settings: Settings, quirks: set[str]) -> None:
    if "tansu-highwater" in quirks:
        consumer = app.consumer
        reported_highwaters = consumer.highwaters

        async def highwaters(*partitions: Any) -> Mapping[Any, int]:
            return await true_end_offsets(settings, await reported_highwaters(*partitions))

        consumer.highwaters = highwaters
