"""LiveStats: what the dashboard shows, computed from the outputs of each batch."""
import asyncio
from collections import deque
from types import SimpleNamespace

import msgspec

from streams import lag as lag_mod
from streams import metrics
from streams.live_stats import LiveStats, percentile
from streams.web import dashboard_data
from tidewater.outputs import ChurnScore, Recommendation, RetentionOffer, ScoredItem, encode_output
from tidewater.settings import Settings

S = Settings()
T0 = 1_700_000_000.0


def churn(score: float, model: str = "heuristic:recency-v1", user: str = "u1") -> tuple:
    value = encode_output(ChurnScore(event_id="e", user_id=user, as_of=1.0, score=score, trigger="activity",
                                     model_version=model, recency_days=1.0, frequency=1.0, monetary=1.0))
    return (S.topic_churn_scores, None, user.encode(), value)


def rec(user: str, n_items: int = 5, index: str = "idx-1") -> tuple:
    value = encode_output(Recommendation(
        event_id="e", user_id=user, as_of=2.0, source_event_id="s",
        items=[ScoredItem(item_id=f"i{k}", score=1.0 / (k + 1)) for k in range(n_items)],
        model_version="recs-1", index_version=index))
    return (S.topic_recommendations, None, user.encode(), value)


def offer(user: str, score: float = 0.9) -> tuple:
    value = encode_output(RetentionOffer(
        event_id="e", user_id=user, as_of=3.0, offer_type="discount", discount_pct=15.0, churn_score=score,
        reason_codes=["inactive_30d"], items=[], model_version="churn-7", expires_at=10.0))
    return (S.topic_offers, None, user.encode(), value)


def test_counts_histogram_and_versions():
    live = LiveStats(S, batch_times=deque(), window_s=10.0)
    outputs = [churn(0.0), churn(0.05), churn(0.55), churn(0.999), churn(1.0), rec("a"), offer("b"),
               (S.topic_dead_letter, None, b"k", b"not json at all")]
    live.observe(outputs, processed=12, now=T0)
    snap = live.snapshot(now=T0 + 0.5)
    assert snap["processed"] == 12
    assert snap["outputs"] == {"churn_scores": 5, "recommendations": 1, "offers": 1, "dead_letters": 1}
    assert snap["outputs_total"] == 8
    assert snap["churn_histogram"]["counts"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]  # 1.0 goes in the last bin
    assert len(snap["churn_histogram"]["bins"]) == 10
    assert snap["current_versions"] == {"churn_model": "churn-7", "rec_model": "recs-1", "index": "idx-1"}
    assert snap["versions"]["churn_model"] == {"heuristic:recency-v1": 5, "churn-7": 1}
    assert snap["decode_errors"] == 0  # dead letters are counted, not decoded
    msgspec.json.encode(snap)  # what /dashboard.json sends


def test_recent_offers_and_recommendations_newest_first_capped_at_20():
    live = LiveStats(S, batch_times=deque())
    for i in range(30):
        live.observe([rec(f"r{i}", n_items=10, index=f"idx-{i}"), offer(f"o{i}", score=0.5 + i / 100)], processed=1,
                     now=T0 + i)
    snap = live.snapshot(now=T0 + 30)
    offers, recs = snap["recent_offers"], snap["recent_recommendations"]
    assert len(offers) == len(recs) == 20
    assert offers[0] == {"user_id": "o29", "offer_type": "discount", "discount_pct": 15.0, "churn_score": 0.79,
                         "reason_codes": ["inactive_30d"], "as_of": 3.0, "model_version": "churn-7"}
    assert offers[-1]["user_id"] == "o10"
    assert recs[0] == {"user_id": "r29", "items": ["i0", "i1", "i2"], "n_items": 10, "index_version": "idx-29",
                       "model_version": "recs-1", "as_of": 2.0}
    assert snap["current_versions"]["index"] == "idx-29"
    assert list(snap["versions"]["index"]) == [f"idx-{i}" for i in range(20, 30)]


def test_regression_versions_seen_are_bounded_to_the_last_ten_seen():
    """Every version that ever produced an output stayed in memory and in each /dashboard.json poll: one more per
    retrain, for good (found by a long-run memory review). The ten seen most recently are kept, with their counts:
    a version still in use is never dropped."""
    live = LiveStats(S, batch_times=deque())
    for day in range(40):
        live.observe([churn(0.5, model=f"churn-{day}"), churn(0.5, model="churn-0")], processed=2, now=T0 + day)
    snap = live.snapshot(now=T0 + 40)
    kept = snap["versions"]["churn_model"]
    assert list(kept) == [*(f"churn-{d}" for d in range(31, 40)), "churn-0"]
    assert kept["churn-0"] == 41 and all(kept[f"churn-{d}"] == 1 for d in range(31, 40))
    assert snap["current_versions"]["churn_model"] == "churn-0"


def test_rates_over_the_last_window_of_wall_time():
    live = LiveStats(S, batch_times=deque(), window_s=10.0)
    live.started = T0 - 100
    for i in range(20):  # 100 events and 2 outputs per second for 20 s
        live.observe([churn(0.5), churn(0.5)], processed=100, now=T0 + i + 0.5)
    events, outs = live.rates(now=T0 + 20)
    assert 95 <= events <= 110 and 1.9 <= outs <= 2.2
    assert live.rates(now=T0 + 40) == (0.0, 0.0)  # the stream stopped: rates fall to zero
    assert live.processed == 2000
    assert len(live._bins) <= 12  # old seconds are dropped


def test_rates_are_not_high_late_in_a_second():
    """Regression: the oldest second in the window was counted whole but the span was window_s, so a steady
    100 events/s read as up to 110 just before a second ended."""
    live = LiveStats(S, batch_times=deque(), window_s=10.0)
    live.started = T0 - 100
    for i in range(300):  # 10 events every 0.1 s for 30 s, the rate read after each
        now = T0 + i / 10 + 0.05
        live.observe([], processed=10, now=now)
        if i >= 110:  # a full window in
            events, _ = live.rates(now=now)
            assert 99.0 <= events <= 101.0, (now - T0, events)


def test_rates_right_after_start_use_the_elapsed_time():
    live = LiveStats(S, batch_times=deque(), window_s=10.0)
    live.started = T0
    live.observe([], processed=300, now=T0 + 1.5)
    events, _ = live.rates(now=T0 + 2.0)
    assert events == 150.0


def test_batch_latency_percentiles_of_the_window():
    times = deque()
    live = LiveStats(S, batch_times=times, window_s=10.0)
    assert live.batch_latency(now=T0) == {"n": 0, "scope": "last 10 s", "p50_ms": None, "p99_ms": None}
    times.append((T0 - 60, 9.0))  # outside the window
    for i in range(1, 101):
        times.append((T0 - 5, i / 1000.0))
    assert live.batch_latency(now=T0) == {"n": 100, "scope": "last 10 s", "p50_ms": 50.0, "p99_ms": 99.0}
    # an idle worker: nothing in the window, so its last 100 batches
    assert live.batch_latency(now=T0 + 60) == {"n": 100, "scope": "last 100 batches", "p50_ms": 50.0,
                                               "p99_ms": 99.0}


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_default_batch_times_come_from_the_batch_seconds_histogram():
    live = LiveStats(S)
    metrics.BATCH_SECONDS.observe(0.0123)
    assert live.batch_latency()["n"] >= 1


def test_observe_never_raises():
    live = LiveStats(S, batch_times=deque())
    live.observe([(S.topic_churn_scores, None, b"k", b"{broken")], processed=1, now=T0)
    live.observe([(S.topic_churn_scores, None, b"k", b'{"score": "high"}')], processed=1, now=T0)
    assert live.decode_errors == 2
    live.observe(None, processed=1, now=T0)  # type: ignore[arg-type] - not even a list
    assert live.observe_errors == 1
    assert live.snapshot(now=T0)["outputs"]["churn_scores"] == 2


def test_dashboard_data_adds_pipeline_lag_and_watermarks():
    live = LiveStats(S, batch_times=deque())
    live.observe([churn(0.7)], processed=5, now=T0)
    live.set_lag({S.topic_clicks: {"0": 3, "1": 0}, S.topic_purchases: {"0": 2}}, now=T0)
    engines = {1: SimpleNamespace(state=SimpleNamespace(watermark=T0 - 3600)),
               0: SimpleNamespace(state=SimpleNamespace(watermark=float("-inf")))}
    pipeline = SimpleNamespace(processed=5, dropped_at_rebalance=0, engines=engines)
    data = msgspec.json.decode(msgspec.json.encode(dashboard_data(S, pipeline, live, now=T0 + 1)))
    assert data["processed"] == 5
    assert data["lag"]["total"] == 5 and data["lag"]["partitions"] == {"0": 5, "1": 0}
    assert data["lag"]["age_s"] == 1.0
    assert data["watermarks"] == {"0": None, "1": T0 - 3600}  # not finite: null, the page shows a dash
    assert data["outputs"]["churn_scores"] == 1


class FakeConsumer:
    """What the collector uses of faust's consumer: assignment, highwater, the committed offsets, earliest."""

    def __init__(self, assigned, highwaters, committed, earliest=None):
        self.assigned, self.highwaters, self._committed_offset = assigned, highwaters, committed
        self.earliest = earliest or {}
        self.earliest_calls = 0

    def assignment(self):
        return set(self.assigned)

    def highwater(self, tp):
        if isinstance(self.highwaters[tp], Exception):
            raise self.highwaters[tp]
        return self.highwaters[tp]

    async def earliest_offsets(self, *tps):
        self.earliest_calls += 1
        return {tp: self.earliest[tp] for tp in tps}


class _TP(tuple):
    """Like faust's TP: a hashable (topic, partition) with attributes."""

    def __new__(cls, topic, partition):
        return super().__new__(cls, (topic, partition))

    topic = property(lambda self: self[0])
    partition = property(lambda self: self[1])


def lag_sample(topic, partition):
    return metrics.REGISTRY.get_sample_value("tidewater_consumer_lag", {"topic": topic, "partition": partition})


def test_lag_is_highwater_minus_committed_and_never_raises():
    c0, c1, c2, p0 = _TP("clicks", 0), _TP("clicks", 1), _TP("clicks", 2), _TP("purchases", 0)
    other = _TP("profiles-changelog", 0)
    consumer = FakeConsumer([c0, c1, c2, p0, other], {c0: 120, c1: None, c2: 50, p0: 10, other: 99},
                            {c0: 100, c1: 0, p0: 12, other: 0}, earliest={c2: 5})
    live = LiveStats(S, batch_times=deque())
    collector = lag_mod.LagCollector(lambda: consumer, ("clicks", "purchases"), sink=live)
    # clicks/1: not fetched yet (no high watermark); clicks/2: nothing committed yet, its earliest offset is
    # asked for and used from the next reading on; purchases/0: committed past a stale high watermark gives 0

    async def twice():
        first = await collector.collect()
        await collector._asking  # the earliest offsets are asked in the background
        return first, await collector.collect()

    first, second = asyncio.run(twice())
    assert first == {"clicks": {"0": 20}, "purchases": {"0": 0}}
    assert second == {"clicks": {"0": 20, "2": 45}, "purchases": {"0": 0}}
    assert consumer.earliest_calls == 1
    assert live.lag == {"clicks": {"0": 20, "2": 45}, "purchases": {"0": 0}}
    assert lag_sample("clicks", "0") == 20 and lag_sample("clicks", "2") == 45
    # a rebalance takes clicks/0 and clicks/2 away and a read fails: their series go, no raise
    consumer.assigned = [p0, c1]
    consumer.highwaters[p0] = RuntimeError("partition not assigned")
    assert asyncio.run(collector.collect()) == {}
    assert lag_sample("clicks", "0") is None and lag_sample("clicks", "2") is None
    assert lag_sample("purchases", "0") == 0  # kept: still assigned, read again next time

    class Broken:
        def assignment(self):
            raise RuntimeError("consumer not started")

    assert asyncio.run(lag_mod.LagCollector(lambda: Broken(), ("clicks",)).collect()) == {}
    assert asyncio.run(lag_mod.LagCollector(lambda: 1 / 0, ("clicks",)).collect()) == {}


def test_regression_lag_is_zero_when_only_transaction_markers_are_left():
    """Faust commits the offset after the last record it acked, never past a trailing commit or abort marker, so an
    idle partition of a transactional topic read 1 (or the aborted records plus 1) behind for good, and
    TidewaterStalled paged on an idle system (found by review). The pipeline's test says when the offsets left are
    markers only; it is asked only where the group has committed something."""
    c0, c1, c2 = _TP("clicks", 0), _TP("clicks", 1), _TP("clicks", 2)
    consumer = FakeConsumer([c0, c1, c2], {c0: 11, c1: 30, c2: 8}, {c0: 10, c1: 20}, earliest={c2: 0})
    asked = []

    def markers_only(tp, committed, highwater):
        asked.append((tp, committed, highwater))
        return tp == c0  # clicks/0: offset 10 is a commit marker; clicks/1: ten records not applied yet

    collector = lag_mod.LagCollector(lambda: consumer, ("clicks",), markers_only=markers_only)

    async def twice():
        await collector.collect()
        await collector._asking
        return await collector.collect()

    assert asyncio.run(twice()) == {"clicks": {"0": 0, "1": 10, "2": 8}}
    assert lag_sample("clicks", "0") == 0
    assert (c2, 0, 8) not in asked  # nothing committed: the earliest offset stands in, no marker test
    # without the test, the marker counts as lag (as in Kafka's own view)
    assert asyncio.run(lag_mod.LagCollector(lambda: consumer, ("clicks",)).collect())["clicks"]["0"] == 1


def test_regression_a_partition_assigned_again_and_not_fetched_loses_its_old_lag():
    """A partition revoked and assigned again within one rebalance has no high watermark until its first fetch: its
    series kept the value from before the rebalance (found by review). A read that fails keeps it (transient)."""
    c0 = _TP("clicks", 0)
    consumer = FakeConsumer([c0], {c0: 120}, {c0: 100})
    collector = lag_mod.LagCollector(lambda: consumer, ("clicks",))
    asyncio.run(collector.collect())
    assert lag_sample("clicks", "0") == 20
    consumer.highwaters[c0] = RuntimeError("being rebuilt")
    asyncio.run(collector.collect())
    assert lag_sample("clicks", "0") == 20
    consumer.highwaters[c0] = None  # assigned again, not fetched yet
    asyncio.run(collector.collect())
    assert lag_sample("clicks", "0") is None
