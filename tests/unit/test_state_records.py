"""The partition state as the worker persists it (streams/app.py): a small state record, the popularity ranking
and one record per item count, written only as they change, restored to the same PartitionState."""
from __future__ import annotations

import dataclasses

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.app import _restore_state, _state_records
from tests.unit.test_engine import DictStore, records
from tidewater import engine as engine_module
from tidewater.engine import EngineConfig, PartitionEngine, PartitionState
from tidewater.events import Click, Erase, Purchase
from tidewater.profile import DAY


class FakeTable:
    """PartitionTable's interface over a dict (keys sorted on prefix reads, None deletes)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.bytes_written = 0

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put_many(self, items) -> None:
        for key, value in items:
            self.bytes_written += len(key) + len(value or b"")
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def items_with_prefix(self, prefix: bytes):
        return sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))


event_st = st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), st.sampled_from(["i1", "i2", "i3", "i4", "i5", ""]),
                     st.sampled_from(["click", "purchase", "erase"]), st.floats(0, 3 * DAY))


@settings(max_examples=60, deadline=None)
# regression: a retried erasure request (the same request at a new offset) recorded its offset without marking the
# state changed, so the persisted state kept the first one's (found by this property, sixteenth session)
@example(batches=[[("u1", "i1", "erase", 0.0)], [("u1", "i1", "erase", 0.0)]], kept=1)
@given(batches=st.lists(st.lists(event_st, max_size=12), min_size=1, max_size=8), kept=st.integers(1, 4))
def test_persisted_records_restore_the_state_after_every_batch(batches, kept):
    """After every batch the table holds exactly the engine's state: the counts (items dropped from them are
    deleted), the ranking, the clock and the recent erasures. Few kept items (``MAX_POPULAR_ITEMS``) and a re-rank every few items
    exercise the tombstones and the ranking record."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "MAX_POPULAR_ITEMS", kept)
        patch.setattr(engine_module, "RERANK_EVERY", 3)
        _check_every_batch(batches, kept)


def _check_every_batch(batches, kept) -> None:
    engine = PartitionEngine(2, EngineConfig(tick_s=DAY / 2, partitions=4), DictStore())
    evs, sizes, t = [], [], 1.8e9
    for batch in batches:
        for user, item, kind, dt in batch:
            t += dt
            eid = f"e{len(evs)}"
            evs.append(Purchase(event_id=eid, user_id=user, ts=t, amount=5.0, item_id=item or None) if kind == "purchase"
                       else Erase(event_id=eid, user_id=user, ts=t) if kind == "erase"
                       else Click(event_id=eid, user_id=user, ts=t, item_id=item or None))
        sizes.append(len(batch))
    recs, at, table = records(evs), 0, FakeTable()
    for size in sizes:
        for record in recs[at:at + size]:
            engine.on_record(record, 0.0)
        at += size
        result = engine.on_notify(1e9)
        if result.state_changed:
            table.put_many(_state_records(2, engine.snapshot(), engine.take_changed_items(),
                                          engine.take_ranking_changed(), engine.take_changed_erasures()))
        restored, one_record = _restore_state(table, 2)
        assert not one_record
        assert restored == (engine.snapshot() if table.data else None)  # nothing written before a change
        assert len(engine.state.item_counts) <= kept


@pytest.mark.parametrize("state, parts", [
    # the one-record format: counts and ranking inside the state record
    (PartitionState(partition=0, watermark=5.0, item_counts={"a": 2, "b": 1}, popular=["a", "b"],
                    popular_counts=[2, 1]), [b"p0", b"p0/item/a", b"p0/item/b", b"p0/ranking"]),
    # until the twenty-first session: the recent erasures inside it
    (PartitionState(partition=0, watermark=5.0, erased={"gone": 4.0}, applied={"clicks/0": 3}),
     [b"p0", b"p0/erased/gone", b"p0/ranking"]),
])
def test_a_state_record_of_before_is_read_and_then_rewritten_in_parts(state, parts):
    table = FakeTable()
    table.put_many([(b"p0", msgspec.msgpack.encode(state))])
    restored, of_before = _restore_state(table, 0)
    assert of_before and restored == state
    engine = PartitionEngine(0, EngineConfig(), DictStore(), state=restored)
    engine.mark_all_changed()
    table.put_many(_state_records(0, engine.snapshot(), engine.take_changed_items(), engine.take_ranking_changed(),
                                  engine.take_changed_erasures()))
    again, of_before = _restore_state(table, 0)
    # a state from before the offset marks is upgraded to get them
    upgraded = msgspec.structs.replace(state, applied={}) if state.applied is None else state
    assert not of_before and again == upgraded
    assert sorted(table.data) == parts


def test_a_batch_writes_its_changed_counts_not_the_whole_table():
    """Regression: the whole state (every count and the ranking) was written with every batch; live, with many
    small batches, that was most of the changelog's bytes. A batch of one event now writes a few dozen bytes."""
    engine = PartitionEngine(0, EngineConfig(), DictStore())
    # 3,500 items: the next one does not make the ranking due again (every RERANK_EVERY items)
    evs = [Click(event_id=f"w{i}", user_id=f"u{i % 50}", ts=1.8e9 + i, item_id=f"item-{i % 2000}")
           for i in range(3500)]
    evs.append(Click(event_id="one", user_id="u1", ts=1.8e9 + 5000, item_id="item-7"))
    recs = records(evs)
    for record in recs[:-1]:
        engine.on_record(record, 0.0)
    engine.on_notify(1e9)
    table = FakeTable()
    table.put_many(_state_records(0, engine.snapshot(), engine.take_changed_items(), engine.take_ranking_changed(),
                                  engine.take_changed_erasures()))
    full = table.bytes_written
    table.bytes_written = 0
    engine.on_record(recs[-1], 0.0)
    assert engine.on_notify(1e9).state_changed
    table.put_many(_state_records(0, engine.snapshot(), engine.take_changed_items(), engine.take_ranking_changed(),
                                  engine.take_changed_erasures()))
    assert table.bytes_written < 300 < 20_000 < full  # the small record now carries its per-source offsets too
    assert _restore_state(table, 0)[0] == engine.snapshot()


def test_regression_a_tick_crossed_by_a_duplicate_event_is_persisted():
    """A duplicate event (its id seen before) changes no profile, but its time can move the clock past a tick
    with nobody to score; the batch did not report a state change, so the new tick (and a re-ranking) waited for
    the next change to be persisted."""
    day = 1.8e9 // DAY * DAY
    evs = [Click(event_id="a", user_id="u1", ts=day + 100, item_id="i1"),
           Click(event_id="a", user_id="u1", ts=day + 1.5 * DAY, item_id="i1"),  # the same id: a duplicate
           Click(event_id="a", user_id="u1", ts=day + 2.5 * DAY, item_id="i1")]
    engine = PartitionEngine(0, EngineConfig(), DictStore())
    changed = []
    for record in records(evs):
        engine.on_record(record, 0.0)
        result = engine.on_notify(1e9)
        engine.store.update(result.profiles)
        changed.append(result.state_changed)
    assert engine.state.next_tick == day + 3 * DAY
    assert changed == [True, True, True]


def test_regression_a_bulk_erasure_grew_the_state_record_past_kafkas_record_limit():
    """The recent erasures (kept for the 7-day guard) were inside the state record, rewritten with every batch: about
    12,000 erasures in a partition within a week made it larger than Kafka's 1 MiB limit, and the worker failed on
    it at every restart (found by review). Each erasure is now a record of its own, written once, and deleted by
    a tombstone when the guard expires."""
    engine = PartitionEngine(0, EngineConfig(erasure_guard_s=7 * DAY), DictStore())
    purge = [Erase(event_id=f"x{i}", user_id=f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd", ts=1.8e9 + i)
             for i in range(3000)]
    table = FakeTable()

    def write():
        table.put_many(_state_records(0, engine.snapshot(), engine.take_changed_items(),
                                      engine.take_ranking_changed(), engine.take_changed_erasures()))

    for record in records(purge):
        engine.on_record(record, 0.0)
    engine.on_notify(1e9)
    write()
    assert len(table.data[b"p0"]) < 300 and len(table.items_with_prefix(b"p0/erased/")) == 3000
    table.bytes_written = 0
    engine.on_record(records([Click(event_id="c", user_id="u", ts=1.8e9 + 4000)])[0], 0.0)
    engine.on_notify(1e9)
    write()
    assert table.bytes_written < 300  # the next batch does not write the erasures again
    assert _restore_state(table, 0) == (engine.snapshot(), False)
    later = records([Click(event_id="d", user_id="u", ts=1.8e9 + 9 * DAY)])[0]
    engine.on_record(dataclasses.replace(later, offset=1), 0.0)
    engine.on_notify(1e9)  # a tick 8 days on: the guard has expired
    write()
    assert not engine.state.erased and not table.items_with_prefix(b"p0/erased/")
    assert not engine.state.erase_positions
