"""streams/producing.py BatchSender against the real broker: a batch's partition state goes in one record batch.

Split at the producer's batch size (256 KiB by default), a crash between two produce requests could land a batch's
item counts without its state record, and the re-read batch counted them again (an open case of the twenty-fifth
session's crash-point fuzz). Kafka appends a record batch whole, so one batch per partition cannot land in part.
"""
import asyncio
import uuid
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.topics import TopicSpec, create_topics
from streams import metrics
from streams.producing import BatchSender, delivered
from tidewater.settings import Settings

pytestmark = [pytest.mark.broker]

SMALL_BATCH = 16 * 1024  # the producer's own batch size: the state below is ~25 times larger


def _state_like(partition: int, items: int) -> list[tuple[str, int, bytes, bytes]]:
    """Item-count records with UUID-like item ids, then the state record, as ``streams.app._state_records``."""
    topic = "state"
    records = [(topic, partition, f"p{partition}/item/{uuid.UUID(int=i)}".encode(), str(i).encode())
               for i in range(items)]
    return records + [(topic, partition, f"p{partition}".encode(), b"x" * 200)]


async def _send_and_read(bootstrap: str, topic: str, whole: bool, whole_max_bytes: int = 1_000_000):
    """(the deliveries of one send of two partitions' states, the records read back in order)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=SMALL_BATCH, acks="all")
    await producer.start()
    try:
        sender = BatchSender(SimpleNamespace(_ensure_producer=lambda: producer), 2, whole_max_bytes=whole_max_bytes)
        records = [(topic, *r[1:]) for p in (0, 1) for r in _state_like(p, 9_000)]
        deliveries = await sender.send(records, whole=whole)
        last = await delivered(deliveries)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(parts)
        read: dict[int, list] = {0: [], 1: []}
        while any(len(read[p]) < last[(topic, p)] + 1 for p in (0, 1)):
            for tp, messages in (await consumer.getmany(*parts, timeout_ms=2000)).items():
                read[tp.partition] += [(m.key, m.value) for m in messages]
    finally:
        await consumer.stop()
    return deliveries, read, records


def test_a_partitions_state_goes_in_one_record_batch_past_the_producers_batch_size(broker):
    topic = "whole-" + uuid.uuid4().hex[:8]
    s = Settings.from_env(environ=dict(TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers))
    asyncio.run(create_topics(s, [TopicSpec(topic, 2)]))
    deliveries, read, records = asyncio.run(_send_and_read(broker.bootstrap_servers, topic, whole=True))
    assert sorted((d.partition, d.count) for d in deliveries) == [(0, 9_001), (1, 9_001)]  # one batch each
    for p in (0, 1):  # the broker took the ~400 kB batch and gives it back, in order
        assert read[p] == [(key, value) for _, partition, key, value in records if partition == p]


def test_without_whole_the_same_state_is_split_at_the_producers_batch_size(broker):
    """The control: the record batches the crash could land apart (the test above can fail)."""
    topic = "split-" + uuid.uuid4().hex[:8]
    s = Settings.from_env(environ=dict(TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers))
    asyncio.run(create_topics(s, [TopicSpec(topic, 2)]))
    deliveries, read, records = asyncio.run(_send_and_read(broker.bootstrap_servers, topic, whole=False))
    assert len([d for d in deliveries if d.partition == 0]) > 10
    assert sum(d.count for d in deliveries) == len(records)
    assert read[0] == [(key, value) for _, partition, key, value in records if partition == 0]


def test_a_state_larger_than_the_request_limit_is_split_and_counted(broker, caplog):
    topic = "over-" + uuid.uuid4().hex[:8]
    s = Settings.from_env(environ=dict(TIDEWATER_BOOTSTRAP_SERVERS=broker.bootstrap_servers))
    asyncio.run(create_topics(s, [TopicSpec(topic, 2)]))
    before = metrics.WHOLE_BATCHES_SPLIT._value.get()
    deliveries, read, records = asyncio.run(
        _send_and_read(broker.bootstrap_servers, topic, whole=True, whole_max_bytes=100_000))
    assert metrics.WHOLE_BATCHES_SPLIT._value.get() == before + 2  # once per partition
    assert "do not fit in one record batch" in caplog.text
    assert sum(d.count for d in deliveries) == len(records)
    assert read[1] == [(key, value) for _, partition, key, value in records if partition == 1]
