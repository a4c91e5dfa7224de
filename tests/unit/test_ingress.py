"""The batch drain (streams/ingress.py) on a real Faust consumer object whose fetches are scripted: input
records reach the pipeline as whole batches in offset order, other topics still go through Faust's
per-message callback, and after acking everything delivered Faust's commit offset passes every gap."""
from __future__ import annotations

import asyncio
from collections import namedtuple
from typing import Any

import faust
import pytest
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ingress import ack_records, consumer_state, install_batch_drain

FakeRecord = namedtuple("FakeRecord", "topic partition offset timestamp timestamp_type headers key value checksum "
                                      "serialized_key_size serialized_value_size")


def record(topic: str, partition: int, offset: int) -> FakeRecord:
    return FakeRecord(topic, partition, offset, 0, 0, [], b"k", b"v", None, 1, 1)


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


def run_drain(fetches: list[dict[TP, list[FakeRecord]]], prepare: Any = None,
              after_deliver: Any = None) -> tuple[Any, list, list]:
    """Drive the drain through ``fetches`` (one record map per fetch), return (consumer, delivered, callbacks).
    ``prepare(app)`` runs first (tables, a recovery in progress); ``after_deliver(app)`` after each delivery."""
    app = faust.App("ingress-test", broker="kafka://127.0.0.1:1", store="memory://")
    if prepare is not None:
        prepare(app)
    consumer = app.consumer
    delivered: list[tuple[TP, list]] = []
    called: list[Any] = []
    fetcher = _Fetcher()
    script = list(fetches)

    async def deliver(tp: TP, records: list) -> None:
        delivered.append((tp, list(records)))
        if after_deliver is not None:
            after_deliver(app)

    async def callback(message: Any) -> None:
        called.append((message.topic, message.partition, message.offset))

    async def wait_next_records(timeout: float) -> tuple[dict, set | None]:
        if not script:
            fetcher._stopped.set()
            return {}, None
        return script.pop(0), None

    consumer.callback = callback
    consumer._wait_next_records = wait_next_records
    consumer.highwater = lambda tp: 0
    app.topics.acks_enabled_for = lambda topic: True
    install_batch_drain(consumer, ["clicks"], deliver)
    app.loop.run_until_complete(consumer._drain_messages(fetcher))  # mode binds its events to the app loop
    return consumer, delivered, called


offsets_strategy = st.lists(st.integers(1, 4), min_size=1, max_size=60).map(
    lambda steps: [sum(steps[: i + 1]) - 1 for i in range(len(steps))])  # strictly increasing from 0, with gaps


@settings(max_examples=60, deadline=None)
@given(offsets=offsets_strategy, cuts=st.lists(st.integers(1, 20), min_size=1, max_size=10))
def test_gaps_never_stall_the_commit_and_every_record_arrives_once_in_order(offsets: list[int],
                                                                              cuts: list[int]) -> None:
    tp = TP("clicks", 0)
    fetches, start = [], 0
    for cut in cuts * 10:
        if start >= len(offsets):
            break
        fetches.append({tp: [record("clicks", 0, o) for o in offsets[start:start + cut]]})
        start += cut
    consumer, delivered, called = run_drain(fetches)
    got = [r.offset for _, batch in delivered for r in batch]
    assert got == offsets[: start] and not called
    # the first offset is where the consumer started; everything after it that never arrived is a gap
    consumer._committed_offset[tp] = offsets[0]
    ack_records(consumer, tp, got)
    assert consumer._new_offset(tp) == got[-1] + 1


def test_a_refetched_batch_is_delivered_from_the_last_delivered_offset_as_fausts_loop_does() -> None:
    """Faust's read offset is the last record delivered, and its loop drops a re-fetch below it: that one record
    comes again (the engine's applied markers skip it), the earlier ones do not."""
    tp = TP("clicks", 1)
    first = [record("clicks", 1, o) for o in range(5)]
    again = [record("clicks", 1, o) for o in range(3, 8)]  # overlaps: 3 and 4 were delivered (Faust keeps 4)
    consumer, delivered, _ = run_drain([{tp: first}, {tp: again}])
    assert [r.offset for r in delivered[1][1]] == [4, 5, 6, 7]
    loop = consumer_state(consumer)["fetch_loop"]  # GET /stats: fetched, and dropped as already delivered
    assert (loop["turns"], loop["records"], loop["skipped"]) == (3, 10, 1)
    assert loop["last_fetched"] == {"clicks[1]": [3, 7]}


def test_regression_a_rebalance_while_gaps_are_recorded_drops_the_batch() -> None:
    """Recording the gaps of a batch awaits a lock; a rebalance that completed meanwhile let the batch through to
    the pipeline, which took it as fetched after the revocation and applied it ahead of the re-read of what the
    revocation dropped (found by review). The batch is left to Faust's seek instead."""
    tp = TP("clicks", 0)

    def prepare(app: Any) -> None:
        async def add_gap_during_a_rebalance(tp: TP, start: int, end: int) -> None:
            app.consumer_generation_id += 1  # the whole rebalance happens inside this await

        app.consumer._add_gap = add_gap_during_a_rebalance

    _, delivered, _ = run_drain([{tp: [record("clicks", 0, 0), record("clicks", 0, 5)]},
                                 {tp: [record("clicks", 0, 6)]}], prepare=prepare)
    assert [(t, [r.offset for r in batch]) for t, batch in delivered] == [(tp, [6])]


def test_other_topics_keep_fausts_per_message_path() -> None:
    changelog = TP("app-profiles-changelog", 0)
    clicks = TP("clicks", 0)
    _, delivered, called = run_drain([{changelog: [record(changelog.topic, 0, o) for o in range(3)],
                                       clicks: [record("clicks", 0, 0)]}])
    assert called == [(changelog.topic, 0, 0), (changelog.topic, 0, 1), (changelog.topic, 0, 2)]
    assert [(tp, [r.offset for r in batch]) for tp, batch in delivered] == [(clicks, [0])]


def test_acks_below_the_committed_offset_are_ignored() -> None:
    app = faust.App("ingress-ack", broker="kafka://127.0.0.1:1", store="memory://")
    tp = TP("clicks", 0)
    consumer = app.consumer
    consumer._committed_offset[tp] = 10
    assert ack_records(consumer, tp, [8, 9, 10, 11]) == 2
    assert ack_records(consumer, tp, [11, 12]) == 1  # 11 was acked already
    assert consumer._new_offset(tp) == 13


def test_a_faust_without_the_internals_is_refused_at_start() -> None:
    """The batch drain depends on Faust's private consumer state; a Faust that changed it must fail loudly at
    start-up, not lose commits silently."""
    class OtherConsumer:
        pass

    with pytest.raises(RuntimeError, match="faust-streaming 0.15.3"):
        install_batch_drain(OtherConsumer(), ["clicks"], lambda tp, records: None)  # type: ignore[arg-type]


def test_a_faust_whose_recovery_lacks_what_the_batch_restore_uses_is_refused_at_start() -> None:
    class OtherRecovery:
        buffers: dict

    app = faust.App("ingress-test-recovery", broker="kafka://127.0.0.1:1", store="memory://")
    with pytest.raises(RuntimeError, match=r"Recovery\.active_tps.*faust-streaming 0.15.3"):
        install_batch_drain(app.consumer, ["clicks"], lambda tp, records: None, recovery_class=OtherRecovery)
    install_batch_drain(app.consumer, ["clicks"], lambda tp, records: None)  # the pinned Faust has them all


def changelog_record(partition: int, offset: int, value: bytes | None) -> FakeRecord:
    return FakeRecord(CHANGELOG, partition, offset, 0, 0, [], f"user-{offset % 7}".encode(), value, None, 1, 1)


CHANGELOG = "ingress-test-profiles-changelog"


def restoring(highwater: int, buffer_size: int = 4, **table_options: Any) -> Any:
    """A ``prepare`` that registers a bytes table and starts restoring its partition 0 up to ``highwater``."""
    def prepare(app: Any) -> None:
        table = app.Table("profiles", partitions=2, key_type=bytes, value_type=bytes,
                          recovery_buffer_size=buffer_size, **table_options)
        recovery = app.tables.recovery
        tp = TP(CHANGELOG, 0)
        recovery.active_tps.add(tp)
        recovery.tp_to_table[tp] = table
        recovery.active_highwaters[tp] = highwater
        recovery.active_offsets[tp] = -1
        recovery._set_recovery_started()
        app.restoring_table = table
    return prepare


def test_a_restore_takes_whole_fetched_batches_and_ends_the_recovery() -> None:
    """streams/ingress.py restore_batch: Faust's offsets and buffers, its batch writes, the end signal."""
    tp = TP(CHANGELOG, 0)
    fetches = [{tp: [changelog_record(0, o, b"v%d" % o) for o in range(0, 3)]},
               {tp: [changelog_record(0, o, b"v%d" % o) for o in range(1, 9)]},  # a re-fetch of 1-2: skipped
               {tp: [changelog_record(0, 9, None), changelog_record(0, 10, b"last")]}]  # a tombstone
    consumer, delivered, called = run_drain(fetches, restoring(highwater=10))
    recovery = consumer.app.tables.recovery
    table = consumer.app.restoring_table
    assert not called and not delivered  # neither Faust's per-message path nor the pipeline saw them
    assert recovery.active_offsets[tp] == 10 and consumer._read_offset[tp] == 10
    assert recovery.signal_recovery_end.is_set() and not recovery.in_recovery
    assert not any(recovery.buffers.values())  # everything written
    expected: dict[bytes, bytes] = {}
    for o in range(0, 11):  # last write wins per key, a tombstone deletes
        key = f"user-{o % 7}".encode()
        if o == 9:
            expected.pop(key, None)
        else:
            expected[key] = b"last" if o == 10 else b"v%d" % o
    assert dict(table.data.items()) == expected


def test_a_restore_not_done_yet_keeps_buffering_below_the_buffer_size() -> None:
    tp = TP(CHANGELOG, 0)
    consumer, _, called = run_drain([{tp: [changelog_record(0, o, b"x") for o in range(3)]}],
                                    restoring(highwater=50, buffer_size=10))
    recovery = consumer.app.tables.recovery
    assert not called and recovery.in_recovery and not recovery.signal_recovery_end.is_set()
    assert [e.message.offset for e in recovery.buffers[consumer.app.restoring_table]] == [0, 1, 2]
    assert not dict(consumer.app.restoring_table.data.items())  # buffered, not yet written


def test_what_the_batch_restore_does_not_take_goes_through_fausts_path() -> None:
    tp, standby = TP(CHANGELOG, 0), TP(CHANGELOG, 1)  # partition 1 is not an active restore

    def suspended(app: Any) -> None:
        restoring(highwater=10)(app)
        app.consumer.suspend_flow.set()  # a rebalance in progress

    for prepare, fetch in ((restoring(highwater=10), {standby: [changelog_record(1, 0, b"s")]}),
                           (suspended, {tp: [changelog_record(0, 0, b"a")]})):
        consumer, _, called = run_drain([fetch], prepare)
        assert called  # Faust's per-message callback
        assert consumer.app.tables.recovery.active_offsets[tp] == -1


def rebalanced(app: Any) -> None:
    """An ``after_deliver`` for run_drain: a rebalance completed while the batch was being delivered."""
    app.consumer_generation_id += 1


def test_regression_a_batch_delivered_across_a_rebalance_does_not_move_the_read_offset():
    """A delivery can wait (a full inbox) while a rebalance resets Faust's read offsets; setting the offset of
    that stale batch afterwards made Faust drop the re-fetch of those records as already delivered."""
    tp = TP("clicks", 0)
    fetch = [{tp: [record("clicks", 0, 5), record("clicks", 0, 6)]}]
    consumer, delivered, _ = run_drain(fetch, after_deliver=rebalanced)  # a rebalance while the batch waited
    assert [r.offset for _, batch in delivered for r in batch] == [5, 6]
    assert consumer._read_offset[tp] is None  # left for Faust's seek to the committed offset
    consumer, _, _ = run_drain(fetch)
    assert consumer._read_offset[tp] == 6  # without a rebalance: read up to the batch's end


def test_regression_records_fetched_before_a_revocation_are_not_applied_after_it():
    """deliver() waited for inbox space; the revocation emptied the inbox and set the space, and the stale batch
    went in, ahead of the re-read of the records the revocation had dropped (whose markers it would then skip)."""
    from types import SimpleNamespace

    from streams.app import Pipeline

    async def acquire() -> None:
        return None

    pipeline = SimpleNamespace(app=SimpleNamespace(flow_control=SimpleNamespace(acquire=acquire)), inbox=["old"],
                               inbox_max=1, _space=asyncio.Event(), _ready=asyncio.Event(), revocations=0,
                               dropped_at_rebalance=0, held=lambda: 0, held_max=10)

    async def scenario() -> None:
        waiting = asyncio.ensure_future(Pipeline.deliver(pipeline, TP("clicks", 0), [record("clicks", 0, 9)]))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # the inbox is full
        pipeline.revocations += 1  # what Pipeline.revoke does, under its lock
        pipeline.dropped_at_rebalance += len(pipeline.inbox)
        pipeline.inbox = []
        pipeline._space.set()
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())
    assert pipeline.inbox == [] and pipeline.dropped_at_rebalance == 2


def test_regression_a_batch_taken_before_a_revocation_is_dropped_not_applied_after_it(tmp_path):
    """The batch loop took a batch from the inbox while a revocation waited for the lock; the revocation emptied
    the inbox but the batch was applied after it, reopening the revoked partition's engine from tables without
    the last batches (their markers then skipped the re-read records: lost events; found by review)."""
    from tests.unit.pipelines import offline_pipeline

    pipeline = offline_pipeline(tmp_path)
    taken_at = pipeline.revocations
    asyncio.run(pipeline.revoke({0}))
    asyncio.run(pipeline.on_batch([record("clicks", 0, 9)], taken_at=taken_at))
    assert pipeline.engines == {} and pipeline.dropped_at_rebalance == 1


def test_regression_at_the_merges_bound_only_the_topic_partitions_ahead_stop_being_fetched(tmp_path):
    """The inbox was bounded but emptied into the engines' merges every batch, and those were not: a source behind
    but delivering nothing held back all of the other's backlog in memory, none of it acked (found by review).
    Fetching then waited at the bound, for every topic: the one the merge waited for too, whose records it then
    let the held ones go ahead of (a replay's outputs depended on fetch timing; found by review). Now the topic
    partitions whose records are held stop being fetched, and the others go on."""
    from tests.unit.pipelines import offline_pipeline

    class Held:
        def __init__(self, n: int, ahead: list[str]) -> None:
            self.n, self.ahead = n, ahead

        def pending(self) -> int:
            return self.n

        def sources_ahead(self) -> list[str]:
            return self.ahead

        def drop_pending(self) -> None:
            self.n = 0

    pipeline = offline_pipeline(tmp_path)
    clicks, purchases = pipeline.settings.input_topics
    consumer = pipeline.app.consumer
    every = {TP(topic, p) for topic in (clicks, purchases) for p in range(4)}
    consumer.assignment = lambda: set(every)
    consumer._set_active_tps(set(every))

    async def acquire() -> None:
        return None

    pipeline.app.flow_control.acquire = acquire
    pipeline.engines = {0: Held(pipeline.held_max, [purchases]), 1: Held(0, [])}
    pipeline._hold_back()
    assert consumer._get_active_partitions() == every - {TP(purchases, 0)}
    # what the merge waits for is still taken (it was not: every fetch waited)
    asyncio.run(asyncio.wait_for(pipeline.deliver(TP(clicks, 0), [record(clicks, 0, 3)]), 1))
    assert [r.offset for r in pipeline.inbox] == [3]
    pipeline.engines[0].n = pipeline.held_max - 1  # the clicks released a few: still held back (no flapping)
    pipeline._hold_back()
    assert consumer._get_active_partitions() == every - {TP(purchases, 0)}
    pipeline.engines[0].n = pipeline.held_max // 2 - 1  # below half the bound: fetched again
    pipeline._hold_back()
    assert consumer._get_active_partitions() == every and not consumer._buffered_partitions

    # a partition held back and then revoked, or paused by Faust (a table recovery), is not fetched again
    pipeline.engines = {0: Held(pipeline.held_max, [purchases]), 2: Held(1, [clicks])}
    pipeline._hold_back()
    assert consumer._get_active_partitions() == every - {TP(purchases, 0), TP(clicks, 2)}
    consumer.assignment = lambda: every - {TP(purchases, 0)}
    consumer.pause_partitions([TP(clicks, 2)])
    pipeline.engines = {}
    pipeline._hold_back()
    assert consumer._get_active_partitions() == every - {TP(purchases, 0), TP(clicks, 2)}
    assert not consumer._buffered_partitions

    # a revocation forgets that a partition was held back: the drain takes the fetches of those it holds back
    consumer.assignment = lambda: set(every)
    pipeline.engines = {1: Held(pipeline.held_max, [purchases])}
    pipeline._hold_back()
    assert TP(purchases, 1) in consumer._buffered_partitions
    asyncio.run(pipeline.revoke({1}))
    assert TP(purchases, 1) not in consumer._buffered_partitions


def _scripted_positions(monkeypatch, turns: list[dict]) -> None:
    """aiokafka's fetch positions after each fetch turn, as ``fetch_positions`` would read them."""
    script = list(turns)
    monkeypatch.setattr("streams.ingress.fetch_positions", lambda consumer, topics: script.pop(0) if script else {})


def test_a_complete_turn_publishes_the_read_offset_with_the_position_past_a_marker(monkeypatch):
    """What source_status reads to count a topic caught up through transaction markers (streams/app.py): the read
    offset after the turn's deliveries, with aiokafka's position, which a trailing commit marker puts one past."""
    tp = TP("clicks", 0)
    _scripted_positions(monkeypatch, [{tp: 3}, {tp: 4}])
    fetches = [{tp: [record("clicks", 0, 0), record("clicks", 0, 1), record("clicks", 0, 2)]},
               {}]  # a fetch that returned the commit marker alone: no record, the position moved on
    consumer, _, _ = run_drain(fetches)
    assert consumer._tidewater_fetched_through == {tp: (2, 4)}


def test_a_turn_cut_by_a_rebalance_publishes_no_position(monkeypatch):
    tp = TP("clicks", 0)
    _scripted_positions(monkeypatch, [{tp: 3}])
    consumer, _, _ = run_drain([{tp: [record("clicks", 0, 0), record("clicks", 0, 1), record("clicks", 0, 2)]}],
                               after_deliver=rebalanced)
    assert consumer._tidewater_fetched_through == {}


def test_records_on_another_partition_than_their_key_hashes_to_are_counted_and_logged_once(tmp_path, caplog):
    """The README asks producers for Kafka's default partitioner (murmur2); librdkafka's default hashes keys with
    CRC32, which splits a user's clicks and purchases between partitions without a word. The first record of
    each fetched batch is checked: counted in tidewater_misrouted_records_total, logged once per topic."""
    from streams import metrics
    from streams.producing import key_partition
    from tests.unit.pipelines import offline_pipeline

    pipeline = offline_pipeline(tmp_path)
    clicks = pipeline.settings.input_topics[0]

    async def acquire() -> None:
        return None

    pipeline.app.flow_control.acquire = acquire
    partitions = pipeline.settings.partitions
    home = key_partition(b"k", list(range(partitions)))  # where the test records' key b"k" belongs
    away = (home + 1) % partitions
    before = metrics.REGISTRY.get_sample_value("tidewater_misrouted_records_total", {"topic": clicks}) or 0.0
    caplog.set_level("WARNING", logger="tidewater.worker")
    for offset in range(3):
        asyncio.run(pipeline.deliver(TP(clicks, away), [record(clicks, away, offset)]))
    asyncio.run(pipeline.deliver(TP(clicks, home), [record(clicks, home, 0)]))
    after = metrics.REGISTRY.get_sample_value("tidewater_misrouted_records_total", {"topic": clicks})
    assert after - before == 3
    warnings = [r.getMessage() for r in caplog.records if "does not use Kafka's default partitioner" in r.getMessage()]
    assert len(warnings) == 1 and f"hashes to partition {home}" in warnings[0]
