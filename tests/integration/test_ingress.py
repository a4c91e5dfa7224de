"""streams/ingress.py against the real broker: where a partition's position goes when Faust seeks back, and a
topic written by a transactional producer."""
import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from infra.topics import TopicSpec, create_topics
from streams.broker_quirks import QUIRKS_BY_BROKER
from streams.ingress import seek_to_committed_or_beginning
from tidewater.settings import Settings

from .conftest import Deployment, consumer_lag, embedded_broker, wait_for_profiles

pytestmark = [pytest.mark.broker]


def test_regression_idle_worker_on_a_backlog_seeks_uncommitted_partitions_back_to_their_beginning(broker):
    """A worker killed before its first commit left its successor with no committed offsets. Records that the
    successor fetched while its flow was stopped were dropped, and Faust's seek back to the committed offsets
    (aiokafka's ``seek_to_committed``) left those partitions at the end of that fetch: the worker sat idle on a
    backlog of 480 records for two minutes in CI, and they were never read."""
    settings = Settings.from_env(environ={"TIDEWATER_BOOTSTRAP_SERVERS": broker.bootstrap_servers})

    async def scenario():
        await create_topics(settings, [TopicSpec("seek-input", 2), TopicSpec("seek-other", 1)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        for topic, partition in (("seek-input", 0), ("seek-input", 1), ("seek-other", 0)):
            await asyncio.gather(*[await producer.send(topic, b"v", partition=partition) for _ in range(5)])
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id="seek-probe",
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        uncommitted, committed, other = (TopicPartition("seek-input", 0), TopicPartition("seek-input", 1),
                                         TopicPartition("seek-other", 0))
        consumer.assign([uncommitted, committed, other])
        await consumer.commit({committed: OffsetAndMetadata(3, "")})
        fetched = 0
        while fetched < 15 - 3:  # the dropped fetch: every partition read to its end
            batches = await consumer.getmany(timeout_ms=1000)
            fetched += sum(len(records) for records in batches.values())
        after_fetch = {tp: await consumer.position(tp) for tp in (uncommitted, committed, other)}
        await consumer.seek_to_committed()  # aiokafka alone: the uncommitted partitions stay at their end
        aiokafka_alone = {tp: await consumer.position(tp) for tp in (uncommitted, committed, other)}
        for tp in (uncommitted, committed, other):
            consumer.seek(tp, 5)  # the end again, as after the dropped fetch
        returned = await seek_to_committed_or_beginning(consumer, frozenset({"seek-input"}))
        after = {tp: await consumer.position(tp) for tp in (uncommitted, committed, other)}
        await consumer.stop()
        return after_fetch, aiokafka_alone, returned, after, (uncommitted, committed, other)

    after_fetch, aiokafka_alone, returned, after, (uncommitted, committed, other) = asyncio.run(scenario())
    assert after_fetch == {uncommitted: 5, committed: 5, other: 5}
    assert aiokafka_alone == {uncommitted: 5, committed: 3, other: 5}  # the upstream behaviour this works around
    assert returned == {uncommitted: None, committed: 3, other: None}  # what Faust's perform_seek reads
    # the input partition without a commit goes back to its beginning; another topic is left to Faust
    assert after == {uncommitted: 0, committed: 3, other: 5}


@pytest.fixture(scope="module")
def noida():
    """Tansu cannot take a transactional producer (InitProducerId fails: ../shared/stackcheck); noida can."""
    with embedded_broker("noida", "test-broker-noida-txn.log") as b:
        yield b


def test_regression_a_quiet_transactional_topic_does_not_hold_the_other_topic(noida, tmp_path):
    """A transactional producer's commit marker takes an offset that no consumer receives, so the last record of a
    quiet topic stays below its high watermark. The merge took the topic for one with records still in Kafka and
    held the partition's other topic for TIDEWATER_SOURCE_IDLE_MS × 10 (here 300 s; 10 s by default) before
    applying it. aiokafka's fetch position steps over the marker: the worker now counts such a topic as caught
    up once everything it fetched was handed over (found by review)."""
    d = Deployment(noida, tmp_path, partitions=1)
    d.env["TIDEWATER_SOURCE_IDLE_MS"] = "30000"  # quiet: 30 s; "behind": 300 s, beyond this test's wait
    try:
        worker = d.start_worker()
        worker.wait_ready()
        user, ts = "txn-user", 1_600_000_000

        async def produce() -> None:
            txn = AIOKafkaProducer(bootstrap_servers=noida.bootstrap_servers, transactional_id="clicks-txn")
            await txn.start()
            async with txn.transaction():
                for i in range(3):
                    click = {"type": "click", "event_id": f"c{i}", "user_id": user, "ts": ts + i,
                             "item_id": f"item-{i}", "category": "cat"}
                    await txn.send(d.settings.topic_clicks, json.dumps(click).encode(), key=user.encode())
            await txn.stop()
            plain = AIOKafkaProducer(bootstrap_servers=noida.bootstrap_servers)
            await plain.start()
            purchase = {"type": "purchase", "event_id": "p0", "user_id": user, "ts": ts + 10, "amount": 12.0,
                        "quantity": 1, "item_id": "item-9"}
            await plain.send_and_wait(d.settings.topic_purchases, json.dumps(purchase).encode(), key=user.encode())
            await plain.stop()

        asyncio.run(produce())
        # the three clicks, then the purchase once the quiet clicks topic counts as caught up (without the fix:
        # after 300 s)
        assert wait_for_profiles(worker, {user: 4}, timeout=60) == {user: 4}
        # and its consumer lag falls to 0: the commit marker is the partition's last offset, which Faust never
        # commits past (before the fix: 1 for good, and TidewaterStalled paged on an idle system)
        deadline = time.monotonic() + 30
        while consumer_lag(worker, d.settings.topic_clicks, 0) != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert consumer_lag(worker, d.settings.topic_clicks, 0) == 0
        assert consumer_lag(worker, d.settings.topic_purchases, 0) == 0
    finally:
        d.stop()


def test_regression_the_events_of_an_aborted_transaction_are_not_applied(noida, tmp_path):
    """Faust reads uncommitted records unless its guarantee is exactly once, so a click written in a transaction
    that its producer then aborted was applied to the profile (found by review). The worker's consumer and
    `tidewater record` read committed records only. On noida that dropped the producer's next committed click
    once the worker had read past the abort marker (noida lists aborted transactions that ended before the fetch:
    the ``noida-aborted-txns`` quirk, set by the deployment as by `tidewater up`): the test makes sure the worker
    has read past each transaction before the next is written (a plain click after the abort, applied first)."""
    d = Deployment(noida, tmp_path, partitions=1)
    try:
        worker = d.start_worker()
        worker.wait_ready()
        user, ts = "abort-user", 1_600_000_000

        def click(i: int) -> bytes:
            return json.dumps({"type": "click", "event_id": f"a{i}", "user_id": user, "ts": ts + i,
                               "item_id": f"item-{i}"}).encode()

        async def produce() -> None:
            txn = AIOKafkaProducer(bootstrap_servers=noida.bootstrap_servers, transactional_id="abort-txn")
            await txn.start()
            try:
                async with txn.transaction():
                    await txn.send(d.settings.topic_clicks, click(0), key=user.encode())
                await asyncio.to_thread(wait_for_profiles, worker, {user: 1}, 60)
                await txn.begin_transaction()
                await txn.send_and_wait(d.settings.topic_clicks, click(1), key=user.encode())
                await txn.abort_transaction()
                plain = AIOKafkaProducer(bootstrap_servers=noida.bootstrap_servers)
                await plain.start()
                try:  # applied only once the worker has read past the abort marker
                    await plain.send_and_wait(d.settings.topic_clicks, click(5), key=user.encode())
                finally:
                    await plain.stop()
                await asyncio.to_thread(wait_for_profiles, worker, {user: 2}, 60)
                async with txn.transaction():
                    await txn.send(d.settings.topic_clicks, click(2), key=user.encode())
            finally:
                await txn.stop()

        asyncio.run(produce())
        assert wait_for_profiles(worker, {user: 3}, timeout=60) == {user: 3}
        profile = worker.get(f"/users/{user}/profile")
        assert "item-1" not in json.dumps(profile) and "item-2" in json.dumps(profile)
        from streams.replay import record

        dump = tmp_path / "clicks.jsonl"
        assert asyncio.run(record(d.settings, d.settings.topic_clicks, str(dump), idle_s=1.0)) == 3
        assert [json.loads(line)["event_id"] for line in dump.read_text().splitlines()] == ["a0", "a5", "a2"]
    finally:
        d.stop()


def test_regression_record_says_when_an_open_transaction_holds_records_back(noida, tmp_path, caplog):
    """`record` reads committed records only, up to the last stable offset: records after a transaction still open
    were left out of the dump in silence (found by review). It now warns, naming the partition and offsets."""
    from streams.replay import record

    settings = Settings.from_env(environ={"TIDEWATER_BOOTSTRAP_SERVERS": noida.bootstrap_servers,
                                          "TIDEWATER_BROKER_QUIRKS": QUIRKS_BY_BROKER["noida"]})
    topic = "open-txn"
    asyncio.run(create_topics(settings, [TopicSpec(topic, 1)]))

    async def scenario() -> int:
        plain = AIOKafkaProducer(bootstrap_servers=noida.bootstrap_servers)
        txn = AIOKafkaProducer(bootstrap_servers=noida.bootstrap_servers, transactional_id="open-txn")
        await plain.start()
        await txn.start()
        try:
            await plain.send_and_wait(topic, b'{"before": 1}')
            await txn.begin_transaction()
            await txn.send_and_wait(topic, b'{"in": 1}')
            await plain.send_and_wait(topic, b'{"after": 1}')
            n = await record(settings, topic, str(tmp_path / "dump.jsonl"), idle_s=1.0)
            await txn.abort_transaction()
            return n
        finally:
            await plain.stop()
            await txn.stop()

    with caplog.at_level("WARNING", logger="streams.replay"):
        assert asyncio.run(scenario()) == 1
    assert (tmp_path / "dump.jsonl").read_text() == '{"before": 1}\n'
    assert "open transaction" in caplog.text and "partitions 0 (from offset 1 of 3)" in caplog.text
