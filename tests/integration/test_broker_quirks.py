"""streams/broker_quirks.py against the real broker: the true end of a partition after batched produce."""
import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.topics import TopicSpec, create_topics
from streams.broker_quirks import true_end_offsets
from tidewater.settings import Settings

pytestmark = [pytest.mark.broker]


def test_true_end_offsets_after_multi_record_batches(broker):
    settings = Settings.from_env(environ={"TIDEWATER_BOOTSTRAP_SERVERS": broker.bootstrap_servers})

    async def scenario():
        await create_topics(settings, [TopicSpec("quirk-probe", 2)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=50)
        await producer.start()
        for partition, n in ((0, 10), (1, 3)):
            futures = [await producer.send("quirk-probe", b"v", partition=partition) for _ in range(n)]
            await asyncio.gather(*futures)
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        await consumer.start()
        tps = [TopicPartition("quirk-probe", p) for p in (0, 1)]
        reported = await consumer.end_offsets(tps)
        await consumer.stop()
        return reported, await true_end_offsets(settings, reported)

    reported, true = asyncio.run(scenario())
    assert true == {TopicPartition("quirk-probe", 0): 10, TopicPartition("quirk-probe", 1): 3}
    assert all(true[tp] >= reported[tp] for tp in reported)  # never lower than what the broker says


def test_regression_true_end_offsets_waits_for_every_partition_before_settling(broker):
    """The settle window started before the first fetch: a first answer slower than it (a new connection on a
    loaded machine) returned Tansu's too-low ends and the restore stopped short (found by review). With no
    settle window at all, each partition is still read to its end."""
    settings = Settings.from_env(environ={"TIDEWATER_BOOTSTRAP_SERVERS": broker.bootstrap_servers})

    async def scenario():
        await create_topics(settings, [TopicSpec("quirk-settle", 3)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=50)
        await producer.start()
        for partition, n in ((0, 7), (1, 12), (2, 4)):
            await asyncio.gather(*[await producer.send("quirk-settle", b"v", partition=partition) for _ in range(n)])
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        await consumer.start()
        tps = [TopicPartition("quirk-settle", p) for p in (0, 1, 2)]
        reported = await consumer.end_offsets(tps)
        await consumer.stop()
        return await true_end_offsets(settings, reported, settle_s=0.0)

    true = asyncio.run(scenario())
    assert true == {TopicPartition("quirk-settle", p): n for p, n in ((0, 7), (1, 12), (2, 4))}
