"""Pipeline._send_loop, the task that hands each computed batch to the producer and then acks its inputs."""
import asyncio
from types import SimpleNamespace

import pytest

from streams.app import Outgoing, Pipeline


def _namespace(**parts):
    """What Pipeline's send tasks use of ``self``: its queues, the sender, and the steps, bound to the namespace."""
    pipeline = SimpleNamespace(_outbox=asyncio.Queue(maxsize=1), _changelog_queue=asyncio.Queue(maxsize=1),
                               _store_queue=asyncio.Queue(maxsize=1), _send_failed=None, processed=0,
                               _handed_batch=0, _finished_batch=0, _batch_finished=asyncio.Condition(),
                               _abandoned=False,
                               throughput=SimpleNamespace(acked=lambda n, now: None), **parts)
    for name in ("_stage", "_produce_outputs", "_produce_changelog", "_stored", "_drained", "_finished",
                 "_hand_over"):
        setattr(pipeline, name, getattr(Pipeline, name).__get__(pipeline))
    return pipeline


class FailingSender:
    def __init__(self) -> None:
        self.sent: list = []

    async def send(self, records, whole=False) -> list:
        self.sent.append(records)
        raise OSError("broker gone")


def test_regression_a_failed_send_does_not_hang_the_batch_loop() -> None:
    """The outbox holds one batch. When a send failed while the next batch waited in the outbox and the batch
    loop was already putting a third, the send task used to stop taking batches: that put waited forever and
    the worker hung instead of stopping. Batches after a failure are taken but neither sent nor acked."""
    acked: list = []
    pipeline = _namespace(sender=FailingSender(), _write=None, _ack=acked.append)

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        for number, batch in enumerate(("a", "b", "c", "d", "e"), start=1):
            out = Outgoing(number, outputs=[("out", None, b"k", batch.encode())], done=[batch])
            await asyncio.wait_for(pipeline._hand_over(out), 2)
        await asyncio.wait_for(Pipeline._drained(pipeline), 2)  # type: ignore[arg-type]
        sending.cancel()

    asyncio.run(scenario())
    assert isinstance(pipeline._send_failed, OSError)
    assert len(pipeline.sender.sent) == 1  # only the first batch reached the producer
    assert acked == [] and pipeline.processed == 0  # nothing after (or in) the failed batch is acked


class ControlledSender:
    """Each send returns one Delivery whose future the test resolves or fails."""

    def __init__(self) -> None:
        self.sent: list = []  # (topic of the first record, future)

    async def send(self, records, whole=False) -> list:
        from streams.producing import Delivery

        future = asyncio.get_running_loop().create_future()
        self.sent.append((records[0][0], future))
        return [Delivery(future, records[0][0], 0, len(records))]


def _pipeline(sender, log):
    return _namespace(sender=sender, _write=lambda out, last: log.append(("write", dict(last))),
                      _ack=lambda done: log.append(("ack", list(done))))


def _batch():
    return Outgoing(1, outputs=[("recs", None, b"u1", b"r")], changelog=[("profiles-changelog", 0, b"u1", b"p")],
                    done=["record-1"])


async def settle(condition, steps: int = 10_000) -> None:
    """Let the other tasks run until ``condition()`` holds: loop turns, not a sleep of some milliseconds that a
    stalled loop on a busy machine may not honour."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the send tasks did not get there")


def _send_one_batch(drive):
    """Run the send tasks on one batch; ``drive(sender, log)`` resolves its deliveries. (pipeline, sender, log)"""
    log: list = []
    sender = ControlledSender()
    pipeline = _pipeline(sender, log)

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        await pipeline._hand_over(_batch())
        await settle(lambda: sender.sent)
        await drive(sender, log)
        await asyncio.wait_for(pipeline._drained(), 2)
        sending.cancel()

    asyncio.run(scenario())
    return pipeline, sender, log


def test_a_batch_is_stored_and_acked_only_after_its_outputs_then_its_changelog_are_in_kafka() -> None:
    from types import SimpleNamespace as Meta

    async def deliver_in_turn(sender, log) -> None:
        assert [topic for topic, _ in sender.sent] == ["recs"]  # the changelog waits for the outputs
        sender.sent[0][1].set_result(Meta(offset=40))
        await settle(lambda: len(sender.sent) == 2)
        assert [topic for topic, _ in sender.sent] == ["recs", "profiles-changelog"] and log == []
        sender.sent[1][1].set_result(Meta(offset=7))

    pipeline, _, log = _send_one_batch(deliver_in_turn)
    assert log == [("write", {("profiles-changelog", 0): 7}), ("ack", ["record-1"])]
    assert pipeline.processed == 1


def test_regression_a_batchs_state_record_is_sent_only_once_its_profiles_are_in_kafka() -> None:
    """The profile and partition-state records of a batch went out together, as separate produce batches (other
    topics, maybe other brokers): a crash could leave either without the other (found by review). The state now
    follows the profiles' delivery, so the restore only ever finds profiles ahead of the state, which the engine
    reconciles (tests/unit/test_engine_models.py)."""
    from types import SimpleNamespace as Meta

    async def deliver_in_turn(sender, log) -> None:
        sender.sent[0][1].set_result(Meta(offset=40))  # the outputs
        await settle(lambda: len(sender.sent) == 2)
        for _ in range(100):
            await asyncio.sleep(0)
        assert [topic for topic, _ in sender.sent] == ["recs", "profiles-changelog"]  # not the state yet
        sender.sent[1][1].set_result(Meta(offset=7))
        await settle(lambda: len(sender.sent) == 3)
        assert sender.sent[2][0] == "state-changelog" and log == []
        sender.sent[2][1].set_result(Meta(offset=3))

    log: list = []
    sender = ControlledSender()
    pipeline = _pipeline(sender, log)

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        batch = _batch()
        batch.state_changelog = [("state-changelog", 0, b"p0", b"s")]
        await pipeline._hand_over(batch)
        await settle(lambda: sender.sent)
        await deliver_in_turn(sender, log)
        await asyncio.wait_for(pipeline._drained(), 2)
        sending.cancel()

    asyncio.run(scenario())
    assert log == [("write", {("profiles-changelog", 0): 7, ("state-changelog", 0): 3}), ("ack", ["record-1"])]


def test_regression_a_delivery_that_fails_in_kafka_stops_the_worker_before_anything_is_stored_or_acked() -> None:
    """Records were handed to the producer and their inputs acked at once; a delivery that failed later (an
    authorisation error, a record too large for the broker) went unnoticed and Faust committed the offsets."""

    async def fail_the_outputs(sender, log) -> None:
        sender.sent[0][1].set_exception(RuntimeError("TopicAuthorizationFailedError"))

    pipeline, sender, log = _send_one_batch(fail_the_outputs)
    assert isinstance(pipeline._send_failed, RuntimeError)
    assert [topic for topic, _ in sender.sent] == ["recs"]  # no changelog for a batch whose outputs failed
    assert log == [] and pipeline.processed == 0


def test_regression_a_revocation_waits_until_computed_batches_are_sent_and_acks_none_of_the_revoked():
    """Batches still in the send stages at a revocation were produced after the group had moved on: their
    changelog records landed after the next owner had restored the partition, over its newer profiles (or
    brought an erased one back). And acked then, their records came back into Faust's next commit for a
    partition another worker owns (found by review). Now the revocation returns only once they are sent, and
    their inputs are not acked (the next owner re-reads them)."""
    from types import SimpleNamespace as Meta

    acked: list = []
    sender = ControlledSender()
    pipeline = _namespace(sender=sender, _write=lambda out, last: None, _ack=acked.extend)
    pipeline.__dict__.update(
        lock=asyncio.Lock(), revocations=0, dropped_at_rebalance=0, inbox=[], cache=Meta(forget=lambda: None),
        _space=asyncio.Event(), engines={}, stores={0: "stores-0", 1: "stores-1"}, handed_over={}, delivered={},
        held=lambda: 0, app=Meta(consumer=Meta(_buffered_partitions=set())),
        settings=Meta(input_topics=("clicks", "purchases"), rebalance_timeout_s=60.0))
    mine, theirs = Meta(partition=1, offset=5), Meta(partition=0, offset=9)

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        await pipeline._hand_over(Outgoing(1, outputs=[("recs", None, b"u", b"r")],
                                            changelog=[("profiles-changelog", 0, b"u", b"p")],
                                            writes=[(0, "stores-0", [], None), (1, "stores-1", [], None)],
                                            done=[theirs, mine]))
        await settle(lambda: sender.sent)
        revoking = asyncio.ensure_future(Pipeline.revoke(pipeline, {0}))  # type: ignore[arg-type]
        await settle(lambda: 0 not in pipeline.stores)
        assert not revoking.done()  # the outputs are not in Kafka yet
        sender.sent[0][1].set_result(Meta(offset=1))
        await settle(lambda: len(sender.sent) == 2)
        assert not revoking.done()  # nor the changelog
        sender.sent[1][1].set_result(Meta(offset=2))
        await asyncio.wait_for(revoking, 2)
        sending.cancel()

    asyncio.run(scenario())
    assert [topic for topic, _ in sender.sent] == ["recs", "profiles-changelog"]
    assert acked == [mine]  # the record of the revoked partition 0 is not acked
    assert pipeline.processed == 1  # nor counted: its next owner processes it (two workers' sums counted it twice)


def test_regression_a_failed_send_stops_an_idle_worker_too(tmp_path):
    """A failed delivery was raised by the next flush only: a worker with no more input stayed up and /health
    said "ok" (found by review). The batch loop raises it at its next idle check."""
    import time

    import pytest

    from tests.unit.pipelines import offline_pipeline

    pipeline = offline_pipeline(tmp_path)
    pipeline._send_failed = RuntimeError("TopicAuthorizationFailed")
    with pytest.raises(RuntimeError, match="TopicAuthorizationFailed"):
        asyncio.run(asyncio.wait_for(pipeline._batch_loop(0.0, time.monotonic()), 10))


def test_the_merge_clock_counts_only_time_starved_of_input(tmp_path):
    """README, Guarantees: progress, not wall time, decides that a source is idle. The engines' clock
    (``Pipeline.clock``) must not move while the worker is busy with input (a slow batch on a loaded machine would
    otherwise declare the other source idle and make a replay depend on timing), and must move while it waits
    with nothing to do."""
    import time

    from tests.unit.pipelines import offline_pipeline

    pipeline = offline_pipeline(tmp_path)
    busy = {"batches": 0, "more": True}

    async def slow_batch(batch, taken_at=None):
        await asyncio.sleep(0.02)  # wall time passes while a batch is processed
        busy["batches"] += 1
        if busy["more"]:
            pipeline.inbox.append("next record")  # and more input is already waiting
            pipeline._ready.set()

    pipeline.on_batch = slow_batch

    async def scenario() -> tuple[float, float]:
        pipeline.inbox.append("first record")
        loop = asyncio.ensure_future(pipeline._batch_loop(0.0, time.monotonic()))
        await until(lambda: busy["batches"] >= 10)
        while_busy = pipeline.clock()
        busy["more"] = False
        await asyncio.sleep(0.2)  # nothing to do now
        idle = pipeline.clock()
        loop.cancel()
        return while_busy, idle

    async def until(condition):  # wall time must pass here: loop turns alone would not let the batches sleep
        while not condition():
            await asyncio.sleep(0.005)

    while_busy, idle = asyncio.run(scenario())
    assert while_busy == 0.0 and idle > 0.0


def test_regression_a_revocation_does_not_wait_for_the_lock_while_a_batch_waits_for_the_send_stages():
    """A batch's hand-over waits while the send stages are busy (a slow Kafka: up to the producer's timeout), and
    it waited holding the pipeline's lock: a revocation waited for that lock, then drained for up to half the
    rebalance timeout, and outlasted the rebalance so that the group went on without the worker (found by a
    concurrency review). The batch is handed over outside the lock now: the revocation takes the lock at once,
    and its drain waits for that batch too, so its changelog is in Kafka before the group goes on."""
    from collections import Counter
    from types import SimpleNamespace as Meta

    acked: list = []
    sender = ControlledSender()
    pipeline = _namespace(sender=sender, _write=lambda out, last: None, _ack=acked.extend)
    pipeline.__dict__.update(
        lock=asyncio.Lock(), revocations=0, dropped_at_rebalance=0, inbox=[], cache=Meta(forget=lambda: None),
        _space=asyncio.Event(), stores={0: "stores-0"}, handed_over={}, delivered={}, held=lambda: 0,
        engines={0: Meta(pending=lambda: 1, drop_pending=lambda: None, counters={})}, retired_counters=Counter(),
        _owned_without_engine=lambda: [],
        app=Meta(consumer=Meta(_buffered_partitions=set())), clock=lambda: 0.0,
        settings=Meta(input_topics=("clicks", "purchases"), rebalance_timeout_s=60.0))
    first = Outgoing(1, outputs=[("recs", None, b"u", b"1")], changelog=[("profiles-changelog", 0, b"u", b"p1")],
                     writes=[(0, "stores-0", [], None)])
    second = Outgoing(2, outputs=[("recs", None, b"u", b"2")], changelog=[("profiles-changelog", 0, b"u", b"p")],
                      writes=[(0, "stores-0", [], None)])

    async def flush(partitions, now, records=None):
        pipeline._handed_batch = second.batch
        return second

    pipeline._flush = flush

    async def scenario() -> None:
        await pipeline._hand_over(first)  # the outbox is full: no send stage runs yet (Kafka is slow)
        idle = asyncio.ensure_future(Pipeline.on_idle(pipeline))  # type: ignore[arg-type]
        await settle(lambda: pipeline._handed_batch == 2 and not pipeline.lock.locked())
        assert not idle.done()  # the second batch waits for room in the outbox, without the lock
        revoking = asyncio.ensure_future(Pipeline.revoke(pipeline, {0}))  # type: ignore[arg-type]
        await settle(lambda: 0 not in pipeline.stores)  # the revocation took the lock at once
        assert not revoking.done()
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        for n in range(4):  # each batch's outputs, then its changelog, in turn as they are sent
            await settle(lambda: len(sender.sent) > n)
            assert not revoking.done()  # the revocation waits for both batches, the one handed over late too
            sender.sent[n][1].set_result(Meta(offset=n))
        await asyncio.wait_for(revoking, 2)
        await asyncio.wait_for(idle, 2)
        sending.cancel()

    asyncio.run(scenario())
    assert sorted(topic for topic, _ in sender.sent) == ["profiles-changelog"] * 2 + ["recs"] * 2
    assert acked == []  # the revoked partition's records are not acked


def test_the_drain_waits_for_a_batch_whose_hand_over_waited_for_room():
    """``_drained`` waits for every batch handed over, one whose hand-over still waits for room in the outbox
    included (counted when it is handed over): a revocation returns only once that batch's changelog is in Kafka."""
    from types import SimpleNamespace as Meta

    sender = ControlledSender()
    pipeline = _namespace(sender=sender, _write=lambda out, last: None, _ack=lambda done: None)
    first = Outgoing(1, outputs=[("recs", None, b"u", b"1")], changelog=[("profiles-changelog", 0, b"u", b"1")])
    second = Outgoing(2, outputs=[("recs", None, b"u", b"2")], changelog=[("profiles-changelog", 0, b"u", b"2")])

    async def scenario() -> None:
        await pipeline._hand_over(first)  # the outbox is full
        waiting = asyncio.ensure_future(pipeline._hand_over(second))
        await settle(lambda: pipeline._handed_batch == 2)
        drained = asyncio.ensure_future(pipeline._drained())
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        for n in range(4):
            await settle(lambda: len(sender.sent) > n)
            assert not drained.done(), f"drained after {n} of 4 sends"
            sender.sent[n][1].set_result(Meta(offset=n))
        await asyncio.wait_for(drained, 2)
        await waiting
        sending.cancel()

    asyncio.run(scenario())


class RecordingSender:
    """Each send returns one Delivery whose future the test resolves; keeps the records sent."""

    def __init__(self) -> None:
        self.sent: list = []  # (records, future)
        self.whole: list = []  # the records sent with whole=True (one record batch per partition)

    async def send(self, records, whole=False) -> list:
        from streams.producing import Delivery

        future = asyncio.get_running_loop().create_future()
        self.sent.append((list(records), future))
        if whole:
            self.whole.append(list(records))
        return [Delivery(future, records[0][0], records[0][1] or 0, len(records))]


def test_a_batchs_tombstones_are_sent_once_its_state_is_in_kafka_and_before_the_next_batchs_changelog():
    """A tombstone that landed without its batch's state left the restarted engine without the deleted user's
    history: it rebuilt the user from the batch's events alone, re-sent their scores under the same ids with other
    values and deleted them again (README, Guarantees). The tombstones now follow the state's delivery (a crash in
    between leaves a deletion that the restored state holds: the engine carries it out at the restart), and the next
    batch's changelog follows theirs: its state may no longer tell the deleted profiles apart."""
    from types import SimpleNamespace as Meta

    log: list = []
    sender = RecordingSender()
    pipeline = _pipeline(sender, log)
    first = Outgoing(1, outputs=[("recs", None, b"u1", b"r")], changelog=[("profiles-changelog", 0, b"u1", b"p")],
                     state_changelog=[("state-changelog", 0, b"p0", b"s")],
                     tombstones=[("profiles-changelog", 0, b"gone", None)], done=["record-1"])
    second = Outgoing(2, outputs=[("recs", None, b"u1", b"r2")], changelog=[("profiles-changelog", 0, b"u1", b"p2")],
                      done=["record-2"])

    def sent() -> list:
        return [records for records, _ in sender.sent]

    def holding(record) -> list[int]:
        return [i for i, records in enumerate(sent()) if record in records]

    async def deliver(records, offset: int) -> None:  # the produce request that holds them
        await settle(lambda: holding(records[0]))
        sender.sent[holding(records[0])[0]][1].set_result(Meta(offset=offset))

    async def quiet() -> None:  # the send tasks have had every chance to send what they would
        for _ in range(100):
            await asyncio.sleep(0)

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        await pipeline._hand_over(first)
        await pipeline._hand_over(second)
        await deliver(first.outputs, 40)
        await settle(lambda: holding(first.changelog[0]))
        assert not holding(first.tombstones[0]), "a tombstone was sent before its batch's state was in Kafka"
        await deliver(first.changelog, 7)
        await quiet()
        assert not holding(first.tombstones[0]), "a tombstone was sent before its batch's state was in Kafka"
        await deliver(first.state_changelog, 3)
        await settle(lambda: holding(first.tombstones[0]))
        await deliver(second.outputs, 41)
        await quiet()
        assert not holding(second.changelog[0]), "the next batch's changelog was sent before the tombstones landed"
        assert log == []  # nothing stored or acked before the tombstones are in Kafka
        await deliver(first.tombstones, 8)
        await deliver(second.changelog, 9)
        await asyncio.wait_for(pipeline._drained(), 2)
        sending.cancel()

    asyncio.run(scenario())
    assert [records for records in sent() if records[0][0] != "recs"] == [
        first.changelog, first.state_changelog, first.tombstones, second.changelog]
    assert sender.whole == [first.state_changelog]  # Kafka appends it whole: counts never land without the state
    assert log == [("write", {("profiles-changelog", 0): 8, ("state-changelog", 0): 3}), ("ack", ["record-1"]),
                   ("write", {("profiles-changelog", 0): 9}), ("ack", ["record-2"])]


def test_a_batch_that_changed_erasures_sends_the_rest_of_its_state_once_the_erasures_are_in_kafka():
    """The state's records can span several produce requests (past ``producer_max_batch_bytes``); an earlier one
    can fail while a later one lands. A state record that landed without its batch's erasure records marks the
    erasure request as read, and the restart, without the erasure's position, kept the profile (review of the
    change). The rest of the state (item counts and the state record) goes together after them: counts landed
    without the state record were counted again at the re-read (the final read of the session's change). A batch
    without erasures sends its state in one request, as before."""
    from types import SimpleNamespace as Meta

    log: list = []
    sender = RecordingSender()
    pipeline = _pipeline(sender, log)
    erasing = Outgoing(1, changelog=[("profiles-changelog", 0, b"u1", b"p")],
                       state_erasures=[("state-changelog", 0, b"p0/erased/gone", b"1.0 clicks/0 3")],
                       state_changelog=[("state-changelog", 0, b"p0/item/i1", b"2"), ("state-changelog", 0, b"p0", b"s")],
                       tombstones=[("profiles-changelog", 0, b"gone", None)], done=["record-1"])
    plain = Outgoing(2, changelog=[("profiles-changelog", 0, b"u2", b"p")],
                     state_changelog=[("state-changelog", 0, b"p0/item/i1", b"3"), ("state-changelog", 0, b"p0", b"s2")],
                     done=["record-2"])

    async def scenario() -> None:
        sending = asyncio.ensure_future(Pipeline._send_loop(pipeline))  # type: ignore[arg-type]
        for out in (erasing, plain):
            await pipeline._hand_over(out)
        for offset in range(6):  # each request in turn, once the loop has sent it: never two at once
            await settle(lambda: any(not future.done() for _, future in sender.sent))
            (future,) = [future for _, future in sender.sent if not future.done()]
            future.set_result(Meta(offset=offset))
        await asyncio.wait_for(pipeline._drained(), 2)
        sending.cancel()

    asyncio.run(scenario())
    assert [records for records, _ in sender.sent] == [
        erasing.changelog, erasing.state_erasures, erasing.state_changelog, erasing.tombstones,
        plain.changelog, plain.state_changelog]


@pytest.mark.parametrize("landed", ["the state", "its erasures without the state record"])
def test_a_worker_sends_a_batchs_tombstones_apart_and_a_restart_sends_those_that_did_not_land(tmp_path, landed):
    """Through the worker's own batch step and tables: a deletion's tombstone is handed to the send stages apart
    from the profiles (``Outgoing.tombstones``, after the state), the state records carry the erasure's position, and
    a worker restarted on a state that landed without the tombstone (the profile still stored) deletes the profile
    in its first batch, and keeps one born after its user's erasure. Also when only the state's erasure records
    landed, not the state record (a crash between the two requests that carry them: the review of the change found
    that the erasure and its position, written as two records, could land one without the other, and the restart
    kept the profile)."""
    from streams.producing import key_partition
    from streams.table_io import PartitionTable
    from tests.unit.pipelines import offline_pipeline
    from tidewater.engine import Record
    from tidewater.events import Click, Erase, Purchase, encode_event

    gone, back, other = [u for u in (f"user-{i}" for i in range(100))
                         if key_partition(u.encode(), [0, 1, 2, 3]) == 0][:3]
    t = 1.8e9

    def record(topic, offset, event):
        return Record(topic, 0, offset, event.user_id.encode(), encode_event(event))

    stored_batch = [record("clicks", 0, Click(event_id="c0", user_id=gone, ts=t)),
                    record("purchases", 0, Purchase(event_id="p0", user_id=other, ts=t + 5, amount=3.0))]
    erasing_batch = [record("clicks", 1, Erase(event_id="x0", user_id=gone, ts=t + 1)),
                     record("clicks", 2, Erase(event_id="x1", user_id=back, ts=t + 2)),
                     record("clicks", 3, Click(event_id="c1", user_id=back, ts=t + 3, item_id="i9"))]  # born after

    async def batches(pipeline, *parts):
        await pipeline._open_engines([0])
        return [await pipeline._flush({0}, 0.0, {0: part} if part else None) for part in parts]

    def written(*outs, part="changelog"):
        return [(key, value) for out in outs for _, _, key, value in getattr(out, part)]

    first = offline_pipeline(tmp_path / "first")
    stored, erasing = asyncio.run(batches(first, stored_batch, erasing_batch))
    assert [key for key, _ in written(stored)] == [gone.encode()] and not stored.tombstones
    assert [key for key, _ in written(erasing)] == [back.encode()]
    assert erasing.tombstones == [(first.profiles_changelog, 0, gone.encode(), None)]
    # the erasure and its request's position in one record, before the state record (sent once they are in Kafka)
    (erasure,) = [value for key, value in written(erasing, part="state_erasures") if key == f"p0/erased/{gone}".encode()]
    assert erasure.endswith(b" clicks/0 1")
    assert written(erasing, part="state_changelog")[-1][0] == b"p0"  # the rest of the state, its record last

    # what landed: both batches' profiles and states, not the tombstone
    restarted = offline_pipeline(tmp_path / "restarted")
    PartitionTable(restarted.profiles, 0).put_many(written(stored, erasing))
    for out in (stored, erasing):
        rest = written(out, part="state_changelog") if out is stored or landed == "the state" else []
        PartitionTable(restarted.states, 0).put_many(written(out, part="state_erasures") + rest)
    later = [record("purchases", 1, Purchase(event_id="p1", user_id=other, ts=t + 10, amount=1.0))]  # moves the merge
    (again, reread) = asyncio.run(batches(restarted, None, erasing_batch + later))  # not acked: read again
    assert again.tombstones == [(restarted.profiles_changelog, 0, gone.encode(), None)]
    assert restarted.stores[0].view.get(gone) is None  # nor read again meanwhile
    assert restarted.stores[0].view.get(back).n_events == 1
    # what landed before the state record counts nothing twice at the re-read (item counts did, when they went in
    # the erasures' request: found by the final read of the session's change)
    assert restarted.engines[0].state.item_counts == first.engines[0].state.item_counts == {"i9": 1}


def test_regression_the_idle_pass_runs_a_batch_for_deletions_a_restore_carried_out():
    """A restart deletes the stored profiles whose tombstones a crash lost; their tombstones go out with the next
    batch. The idle pass ran one only for records held in the merge, so an idle partition kept such a profile (an
    erased user's) on disk and served it at GET /users/{id}/profile until its next event."""
    from types import SimpleNamespace as Meta

    flushed: list = []
    handed: list = []

    async def flush(partitions, now, records=None):
        flushed.append(set(partitions))
        return "batch"

    async def hand_over(out):
        handed.append(out)

    pipeline = Meta(lock=asyncio.Lock(), clock=lambda: 0.0, _flush=flush, _hand_over=hand_over,
                    _owned_without_engine=lambda: [],
                    engines={0: Meta(pending=lambda: 0, deletions_waiting=lambda: 2),
                             1: Meta(pending=lambda: 0, deletions_waiting=lambda: 0),
                             2: Meta(pending=lambda: 3, deletions_waiting=lambda: 0),
                             3: Meta(pending=lambda: 0)})  # an engine without deletions (bench, placeholders)
    asyncio.run(Pipeline.on_idle(pipeline))  # type: ignore[arg-type]
    assert flushed == [{0, 2}] and handed == ["batch"]


def test_regression_an_idle_partition_gets_its_engine_and_its_lost_tombstones_after_a_restart(tmp_path):
    """Engines were opened by a partition's first record only: after a restart, an idle partition had no engine, so
    the deletions its restored state called for (a crash lost their tombstones) were not carried out, and the
    erased user's profile stayed stored and served until the partition's next event (found by review, which
    showed that the idle pass's check of ``deletions_waiting`` never saw such an engine). The idle pass opens an
    engine for each restored partition the worker owns."""
    from aiokafka import TopicPartition as TP

    from streams.producing import key_partition
    from streams.table_io import PartitionTable
    from tidewater.engine import Record
    from tidewater.events import Click, Erase, Purchase, encode_event

    from .pipelines import offline_pipeline

    gone, other = [u for u in (f"user-{i}" for i in range(100)) if key_partition(u.encode(), [0, 1, 2, 3]) == 0][:2]
    t = 1.8e9

    def record(topic, offset, event):
        return Record(topic, 0, offset, event.user_id.encode(), encode_event(event))

    first_batch = [record("clicks", 0, Click(event_id="c0", user_id=gone, ts=t)),
                   record("purchases", 0, Purchase(event_id="p0", user_id=other, ts=t + 5, amount=3.0))]
    erasing_batch = [record("clicks", 1, Erase(event_id="x0", user_id=gone, ts=t + 1))]

    async def run(pipeline, *batches):
        await pipeline._open_engines([0])
        return [await pipeline._flush({0}, 0.0, {0: batch}) for batch in batches]

    first = offline_pipeline(tmp_path / "first")
    outs = asyncio.run(run(first, first_batch, erasing_batch))
    assert outs[1].tombstones  # the erasure's tombstone, which the crash loses: everything else lands

    def records_of(out, part):
        return [(key, value) for _, _, key, value in getattr(out, part)]

    restarted = offline_pipeline(tmp_path / "restarted")
    profiles, states = PartitionTable(restarted.profiles, 0), PartitionTable(restarted.states, 0)
    profiles.put_many(records_of(outs[0], "changelog") + records_of(outs[1], "changelog"))
    for out in outs:
        states.put_many(records_of(out, "state_erasures") + records_of(out, "state_changelog"))
    assert profiles.get(gone.encode()) is not None
    topics = restarted.settings.input_topics
    restarted.app.consumer.assignment = lambda: {TP(topic, p) for topic in topics for p in (0, 2)}
    handed: list = []

    async def hand_over(out):
        handed.append(out)

    restarted._hand_over = hand_over
    asyncio.run(restarted.on_idle())
    assert sorted(restarted.engines) == [0, 2]  # both owned partitions, neither with a record yet
    assert len(handed) == 1 and [key for _, _, key, _ in handed[0].tombstones] == [gone.encode()]
    assert [key for _, _, key, _ in handed[0].changelog] == []  # nothing else written, nothing acked
    assert handed[0].done == []
    restarted.app.rebalancing = True  # no engine opened while a rebalance (or a recovery) goes on
    restarted.app.consumer.assignment = lambda: {TP(topic, 1) for topic in topics}
    asyncio.run(restarted.on_idle())
    assert sorted(restarted.engines) == [0, 2] and len(handed) == 1


@pytest.mark.parametrize("request_size, whole", [(None, 1_000_000), ("5000000", 1_000_000), ("300000", 300_000)])
def test_regression_a_batchs_state_is_never_built_larger_than_kafkas_default_message_limit(tmp_path, monkeypatch,
                                                                                          request_size, whole):
    """A state goes in one record batch of up to Faust's producer_max_request_size, which its environment variable
    can raise past the broker's message.max.bytes (1,048,588 by default): every batch's state would then be refused,
    again at each restart (found by review). Capped at 1,000,000 bytes; a lower request size is kept."""
    from .pipelines import offline_pipeline

    if request_size is not None:
        monkeypatch.setenv("PRODUCER_MAX_REQUEST_SIZE", request_size)
    assert offline_pipeline(tmp_path).sender.whole_max_bytes == whole
