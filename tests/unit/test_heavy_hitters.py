"""Bounded counts of frequent keys (tidewater/heavy_hitters.py, Space-Saving): its guarantees on any stream."""
from __future__ import annotations

from collections import Counter

from hypothesis import given, strategies as st

from tidewater import heavy_hitters
from tidewater.engine import EngineConfig, PartitionEngine
from tidewater.events import Click

streams = st.lists(st.sampled_from("abcdefghij"), max_size=200)


@given(stream=streams, capacity=st.integers(1, 6))
def test_space_saving_guarantees(stream, capacity):
    counts: dict[str, int] = {}
    for key in stream:
        heavy_hitters.count(counts, key, capacity)
    true = Counter(stream)
    assert len(counts) <= capacity
    assert sum(counts.values()) == len(stream)
    assert all(counts[key] >= true[key] for key in counts)  # never an undercount
    assert {key for key, n in true.items() if n * capacity > len(stream)} <= set(counts)  # the frequent are in


@given(stream=st.lists(st.integers(0, 40).map(lambda i: f"k{i}"), max_size=400), capacity=st.integers(1, 12),
       swap_at=st.integers(0, 400))
def test_the_weakest_index_displaces_the_keys_a_scan_displaces(stream, capacity, swap_at):
    """The heap behind a large table (the partition's item counts) gives the same table and the same displaced
    keys, step by step, as the scan it replaces; also when the table object is replaced (a restored state)."""
    scanned: dict[str, int] = {}
    indexed: dict[str, int] = {}
    index = heavy_hitters.WeakestIndex()
    for i, key in enumerate(stream):
        if i == swap_at:
            indexed = dict(indexed)  # another object with the same counts
        assert heavy_hitters.count(indexed, key, capacity, index) == heavy_hitters.count(scanned, key, capacity)
        assert indexed == scanned


def test_regression_a_new_key_gets_in_once_every_count_is_above_one():
    """Evicting the weakest after adding the newcomer evicted the newcomer itself once every kept key had a count
    of 2 or more: the partition's popular items and a user's categories froze (found by review)."""
    counts = {f"old-{i}": 2 for i in range(5)}
    for _ in range(10):
        heavy_hitters.count(counts, "new-hit", 5)
    assert "new-hit" in counts and counts["new-hit"] >= 10


def test_a_new_hit_gets_into_the_partition_item_counts(monkeypatch):
    from tidewater import engine as engine_module

    monkeypatch.setattr(engine_module, "MAX_POPULAR_ITEMS", 4)
    events = [Click(event_id=f"o{i}", user_id=f"u{i}", ts=float(i), item_id=f"old-{i % 4}") for i in range(12)]
    events += [Click(event_id=f"n{i}", user_id=f"v{i}", ts=100.0 + i, item_id="new-hit") for i in range(20)]
    from tests.unit.test_engine import DictStore, records

    engine = PartitionEngine(0, EngineConfig(), DictStore())
    for record in records(events):
        engine.on_record(record, 0.0)
    engine.on_notify(1e18)
    counts = engine.state.item_counts
    assert len(counts) == 4 and max(counts, key=counts.get) == "new-hit"


# --- found by mutation testing (twenty-sixth session): behaviours no test pinned

def test_count_returns_the_key_it_displaced_and_none_otherwise():
    """The engine marks the displaced item as changed (its count left the table): ``count`` must name it, with or
    without the index (the differential test compared the two paths with each other only)."""
    for index in (None, heavy_hitters.WeakestIndex()):
        counts = {"a": 3, "b": 1, "c": 2}
        assert heavy_hitters.count(counts, "a", 3, index) is None  # already counted
        assert heavy_hitters.count(counts, "new", 3, index) == "b"
        assert counts == {"a": 4, "c": 2, "new": 2}
        assert heavy_hitters.count(counts, "other", 3, index) == "c"  # ties by key: "c" < "new"
        assert heavy_hitters.count({}, "x", 3, index) is None
