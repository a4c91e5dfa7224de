"""streams/metrics.py: the batch observe gives the same histogram as observing one value at a time."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.metrics import observe_many, record_ages


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=200))
def test_observe_many_equals_one_observe_per_value(values: list[float]) -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.05, 0.5, 1, 10)
    single = Histogram("age", "age", registry=one, buckets=buckets)
    batched = Histogram("age", "age", registry=many, buckets=buckets)
    for value in values:
        single.observe(value)
    observe_many(batched, values)
    assert _exposition(one) == _exposition(many)


def test_regression_an_age_from_a_clock_ahead_counts_as_zero_and_the_sum_never_falls() -> None:
    """A producer clock ahead of the worker's gave negative ages: the histogram's _sum fell, and rate() took that
    for a counter reset (found by review)."""
    registry = CollectorRegistry()
    ages = Histogram("age", "age", registry=registry, buckets=(0.005, 1))
    observe_many(ages, [-3.0, 2.0])
    assert registry.get_sample_value("age_sum") == 2.0 and registry.get_sample_value("age_count") == 2
    assert registry.get_sample_value("age_bucket", {"le": "0.005"}) == 1


def test_every_metric_is_in_the_readme_table():
    """The README's /metrics table names every metric the worker exports (counters with their _total suffix)."""
    from pathlib import Path

    from streams import metrics

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("| metric | labels | what |"):]
    table = table[:table.index("\n\n")]
    names = {f"{m.name}_total" if m.type == "counter" else m.name for m in metrics.REGISTRY.collect()}
    assert names and all(f"`{name}`" in table for name in names), sorted(n for n in names if f"`{n}`" not in table)


def test_regression_merge_pending_moves_when_partitions_are_revoked(tmp_path):
    """tidewater_merge_pending was set only when a batch was flushed: a worker that lost its partitions kept
    exporting their count (the figure the TidewaterStalled runbook reads)."""
    import asyncio

    from streams import metrics
    from tests.unit.pipelines import offline_pipeline

    class Engine:
        def __init__(self, n):
            self.n = n

        def pending(self):
            return self.n

        def drop_pending(self):
            self.n = 0

    pipeline = offline_pipeline(tmp_path)
    pipeline.engines = {0: Engine(7), 1: Engine(5)}
    metrics.PENDING.set(12)
    asyncio.run(pipeline.revoke({0}))
    assert metrics.REGISTRY.get_sample_value("tidewater_merge_pending") == 5
    asyncio.run(pipeline.revoke({1}))
    assert metrics.REGISTRY.get_sample_value("tidewater_merge_pending") == 0


def test_regression_every_dead_letter_reason_exists_at_zero_before_the_first_letter():
    """A reason's first dead letter made its series appear already at 1, which increase() and the DLQ alert miss."""
    from streams import metrics
    from tidewater.events import REJECT_REASONS

    for reason in REJECT_REASONS:
        assert metrics.REGISTRY.get_sample_value("tidewater_dead_letters_total", {"reason": reason}) is not None


def test_regression_a_record_without_a_timestamp_has_no_age():
    """Kafka writes -1 for a record without a timestamp: its age was the time since 1970, 1.8e9 s in the age
    histograms' sum, which made every average age over the window wrong (found by review)."""
    from types import SimpleNamespace as R

    records = [R(timestamp=1_700_000_000_000), R(timestamp=-1), R(timestamp=None), R(timestamp=1_700_000_001_500)]
    assert record_ages(records, 1_700_000_002.0) == [2.0, 0.5]


def test_regression_stats_counters_survive_a_rebalance(tmp_path):
    """aiokafka revokes every partition at each rebalance, the kept ones too, and /stats summed the counters of
    the engines alive: every group change set them back to 0 while ``processed`` counted since the start (found by
    a scale-out review; the pipeline bench reads ``scoring_errors`` there)."""
    import asyncio
    from collections import Counter

    from tests.unit.pipelines import offline_pipeline

    class Engine:
        def __init__(self, errors):
            self.counters = Counter({("scoring_errors", "v1"): errors, ("events_in", "clicks"): 10})

        def pending(self):
            return 0

        def drop_pending(self):
            pass

    pipeline = offline_pipeline(tmp_path)
    pipeline.engines = {0: Engine(2), 1: Engine(3)}
    asyncio.run(pipeline.revoke({0, 1}))
    pipeline.engines = {1: Engine(1)}  # assigned again, a new engine
    assert pipeline.retired_counters == Counter({("scoring_errors", "v1"): 5, ("events_in", "clicks"): 20})
