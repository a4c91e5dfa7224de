"""The inactivity index a worker rebuilds from its partition's stored profiles when it takes a partition
(``Pipeline._open_engines`` → ``_rebuild_index``), on both table stores, without a broker."""
from __future__ import annotations

import asyncio
import threading

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.table_io import PartitionTable
from tests.unit.pipelines import offline_pipeline as _pipeline
from tidewater.profile import DAY, encode_profile, new_profile


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_an_engine_indexes_exactly_its_partitions_users_by_last_activity(tmp_path, store):
    pipeline = _pipeline(tmp_path, store)
    choose, parts = DefaultPartitioner(), [0, 1, 2, 3]
    users: dict[int, dict[str, tuple[int, bool]]] = {p: {} for p in parts}  # user -> (last day, unscored activity)
    for i in range(60):
        user = f"user-{i}"
        p = choose(user.encode(), parts, parts)
        profile = new_profile(user)
        profile.last_ts, profile.n_events = (100 + i % 7) * DAY + 3600.0, 3 + i % 4
        profile.events_at_score = profile.n_events - (i % 3 == 0)  # every third has events its score did not see
        users[p][user] = (100 + i % 7, i % 3 == 0)
        PartitionTable(pipeline.profiles, p).put_many([(user.encode(), encode_profile(profile))])
    assert all(users.values())
    for p in parts:
        asyncio.run(pipeline._open_engines([p]))
        engine = pipeline.engines[p]
        assert engine._last_day == {u: day for u, (day, _) in users[p].items()}
        assert {u for day_users in engine._by_day.values() for u in day_users} == set(users[p])
        assert all(engine._last_day[u] == day for day, day_users in engine._by_day.items() for u in day_users)
        assert engine._active_since_tick == {u for u, (_, unscored) in users[p].items() if unscored}


def test_regression_a_partitions_index_rebuild_runs_off_the_event_loop(tmp_path, monkeypatch):
    """Rebuilding the index reads every stored profile of the partition: seconds for a large one. It ran on the
    event loop, which then stopped fetching, serving and heartbeating, so the group could drop the worker that
    had just been assigned the partition."""
    import streams.app as app_module

    pipeline = _pipeline(tmp_path, "memory://")
    table = PartitionTable(pipeline.profiles, 0)
    choose, parts = DefaultPartitioner(), [0, 1, 2, 3]
    mine = [u for u in (f"user-{i}" for i in range(400)) if choose(u.encode(), parts, parts) == 0][:40]
    for user in mine:
        profile = new_profile(user)
        profile.last_ts, profile.n_events = 100 * DAY, 1
        table.put_many([(profile.user_id.encode(), encode_profile(profile))])
    decode, threads = app_module.decode_activity, set()

    def recording_decode(raw):
        threads.add(threading.get_ident())
        return decode(raw)

    monkeypatch.setattr(app_module, "decode_activity", recording_decode)

    async def scenario() -> int:
        await pipeline._open_engines([0])
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert len(pipeline.engines[0]._last_day) == 40 and 0 in pipeline.stores
    assert threads and loop_thread not in threads, "the stored profiles were read on the event loop's thread"


def test_regression_a_quiet_source_fully_committed_before_a_restart_is_caught_up(tmp_path):
    """After a restart (or an assignment) nothing has been handed over yet: a source whose records were all
    committed before, and quiet since, was never "caught up", so the other topic's records of the partition
    waited in the merge for idle time, which a backlog never gives (found by review). The committed offset
    now counts as handed over."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.types import TP

    pipeline = _pipeline(tmp_path, "memory://")
    clicks, purchases = pipeline.settings.topic_clicks, pipeline.settings.topic_purchases
    highwater = {TP(clicks, 0): 900, TP(purchases, 0): 500}
    committed = defaultdict(lambda: None, {TP(clicks, 0): 400, TP(purchases, 0): 500})
    pipeline.app = SimpleNamespace(consumer=SimpleNamespace(highwater=highwater.__getitem__,
                                                            _committed_offset=committed))
    assert pipeline.source_status(0)[0] == frozenset({purchases})  # clicks: 500 records still to read
    assert pipeline.source_status(0) == (frozenset({purchases}), frozenset({clicks}))
    pipeline.handed_over[(clicks, 0)] = 899
    assert pipeline.source_status(0)[0] == frozenset({clicks, purchases})
    committed[TP(purchases, 0)] = 499  # one record of purchases not processed yet
    assert pipeline.source_status(0)[0] == frozenset({clicks})
    del committed[TP(purchases, 0)]  # nothing ever committed (a new group): only what is handed over counts
    assert pipeline.source_status(0)[0] == frozenset({clicks})


def test_regression_a_quiet_transactional_topic_is_caught_up_after_a_rebalance_too(tmp_path):
    """A quiet topic whose last offset is a transaction marker counted as caught up in steady state, but after a
    restart or any rebalance it held the partition's other topic again: Faust's seek to the committed offset
    leaves its read offset at that offset (next to read), one above the last record, and the check wanted them
    equal (found by review)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.types import TP

    pipeline = _pipeline(tmp_path, "memory://")
    clicks, purchases = pipeline.settings.topic_clicks, pipeline.settings.topic_purchases
    P = TP(purchases, 0)
    highwater = {TP(clicks, 0): 900, P: 501}  # records up to 499, the commit marker at 500
    consumer = SimpleNamespace(highwater=highwater.__getitem__, _committed_offset=defaultdict(lambda: None, {P: 500}),
                               _read_offset={P: 499}, _tidewater_fetched_through={P: (499, 501)})
    pipeline.app = SimpleNamespace(consumer=consumer)
    pipeline.handed_over[(purchases, 0)] = 499
    assert purchases in pipeline.source_status(0)[0]  # steady state
    pipeline.handed_over.clear()  # a rebalance: nothing handed over, the consumer sought to the committed offset
    consumer._read_offset = {P: 500}
    consumer._tidewater_fetched_through = {P: (500, 501)}  # the first fetch stepped over the marker
    assert purchases in pipeline.source_status(0)[0]
    consumer._tidewater_fetched_through = {P: (500, 500)}  # not stepped over yet: still behind
    assert purchases in pipeline.source_status(0)[1]
    # a record not processed before the restart (committed 499), fetched and waiting in the inbox: Faust's read
    # offset is 499 after the seek and after the record alike, so only the delivery tells them apart
    consumer._committed_offset[P] = 499
    consumer._read_offset, consumer._tidewater_fetched_through = {P: 499}, {P: (499, 501)}
    assert purchases in pipeline.source_status(0)[0]  # sought to 499, nothing delivered: only the marker left
    pipeline.delivered[(purchases, 0)] = 499
    assert purchases in pipeline.source_status(0)[1]
