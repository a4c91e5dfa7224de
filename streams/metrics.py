"""Prometheus metrics of the worker (served at GET /metrics)."""
from __future__ import annotations

import bisect
import time
from collections import deque
from typing import Any, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidewater.events import REJECT_REASONS


class RecentHistogram(Histogram):
    """A Histogram that also keeps the last observations with their wall time (``recent``: (time, value)), so
    the dashboard can show exact percentiles of the last seconds instead of bucket estimates."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self.recent: deque[tuple[float, float]] = deque(maxlen=4096)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        super().observe(amount, exemplar)
        self.recent.append((time.time(), amount))


REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("tidewater_events_in", "Input records received", ["topic"], registry=REGISTRY)
APPLIED = Counter("tidewater_events_applied", "Input events applied to profiles", ["topic"], registry=REGISTRY)
DUPLICATES = Counter("tidewater_duplicates_skipped",
                     "Events skipped as already applied: re-delivered (offset) or written twice (event_id)",
                     ["topic"], registry=REGISTRY)
DEAD_LETTERS = Counter("tidewater_dead_letters", "Records sent to the dead-letter topic", ["reason"],
                       registry=REGISTRY)
for _reason in REJECT_REASONS:  # every reason's series from the start, at 0: increase() misses a series born at 1
    DEAD_LETTERS.labels(_reason)
RECORDS_DONE = Counter("tidewater_records_done", "Input records acked: applied, dead-lettered, skipped (duplicates, "
                       "erased users' events) or clock records; the worker's progress (TidewaterStalled)",
                       registry=REGISTRY)
MISROUTED = Counter("tidewater_misrouted_records",
                    "Input records whose key hashes (murmur2, Kafka's default partitioner) to another partition than "
                    "the one they are on, among the first record of each fetched batch: a producer with another "
                    "partitioner (librdkafka's default) splits users' profiles", ["topic"], registry=REGISTRY)
EVENTS_OUT = Counter("tidewater_events_out", "Output events produced", ["topic"], registry=REGISTRY)
USERS_ERASED = Counter("tidewater_users_erased", "Erasure requests applied: profiles deleted (changelog tombstones)",
                       ["topic"], registry=REGISTRY)
PROFILES_EXPIRED = Counter("tidewater_profiles_expired", "Profiles deleted after TIDEWATER_PROFILE_TTL_S of silence "
                           "(changelog tombstones)", registry=REGISTRY)
ERASED_EVENTS_DROPPED = Counter(
    "tidewater_erased_events_dropped", "Events of an erased user at or before the erasure request, arriving after "
    "it (a producer's retry, a late event): dropped, not dead-lettered", ["topic"], registry=REGISTRY)
LATE_EVENTS = Counter("tidewater_late_events", "Events applied to the profile but too late for their windows (beyond "
                      "TIDEWATER_WINDOW_GRACE_S)", ["topic"], registry=REGISTRY)
TICKS = Counter("tidewater_clock_ticks", "Event-time timer ticks fired", registry=REGISTRY)
CLOCK_RECORDS = Counter("tidewater_clock_records", "Clock records read (a partition's event time moved without a "
                        "user's event: `tidewater clock`)", ["topic"], registry=REGISTRY)
RESTORED = Counter("tidewater_changelog_records_restored",
                   "Changelog records restored into the tables at start-up or after a rebalance, by path: batch "
                   "(streams/ingress.py restore_batch) or faust (its per-record path, for what the batch path "
                   "does not take)", ["table", "path"], registry=REGISTRY)
CORRUPT_STORES_DISCARDED = Counter(
    "tidewater_corrupt_stores_discarded", "Local table partitions discarded at opening because RocksDB found them "
    "damaged (at the opening, or at a read or write before the last stop), and restored from the changelog "
    "(streams/local_state.py)", registry=REGISTRY)
STALE_STORES_DISCARDED = Counter(
    "tidewater_stale_stores_discarded", "Local table partitions discarded at opening, last caught up longer ago "
    "than half the changelogs' tombstone retention, and restored from the changelog (streams/local_state.py)",
    registry=REGISTRY)
SCORING_ERRORS = Counter("tidewater_scoring_errors",
                         "Model calls that failed (raised, or a churn score that is not a finite number), by the "
                         "version that failed: a churn tick was then scored by the recency placeholder, a "
                         "recommendation batch answered from the partition's popularity counts (their versions "
                         "are on those outputs)", ["model_version"],
                         registry=REGISTRY)
WHOLE_BATCHES_SPLIT = Counter(
    "tidewater_whole_batches_split", "A batch's partition state too large for one record batch "
    "(1,000,000 bytes, or Faust's producer_max_request_size if lower): sent in parts, so a crash between them can land its item counts without "
    "the state record, and the re-read batch counts them again (README Guarantees)", registry=REGISTRY)
MODEL_LOAD_FAILURES = Counter("tidewater_model_load_failures",
                              "Registry versions that could not be loaded, by kind; the worker keeps serving what it "
                              "had", ["kind"], registry=REGISTRY)
# the top buckets hold what the docs describe: a daily tick scoring tens of thousands of users for seconds, a backlog
# or replay whose records are minutes or hours old (before, all of it fell in +Inf and quantiles read the top bucket)
AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300, 3600)
BATCH_SIZE = Histogram("tidewater_batch_size", "Records per processed batch", registry=REGISTRY,
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
RECORD_AGE = Histogram("tidewater_record_age_seconds",
                       "Wall time from an input record's Kafka timestamp to its outputs, changelog and state "
                       "acknowledged by Kafka (end-to-end freshness; includes broker, fetch and event-time merge waits)",
                       registry=REGISTRY, buckets=AGE_BUCKETS)
FETCH_AGE = Histogram("tidewater_fetch_age_seconds",
                      "Wall time from an input record's Kafka timestamp to its arrival in the worker's inbox (the "
                      "broker and fetch part of tidewater_record_age_seconds)",
                      registry=REGISTRY, buckets=AGE_BUCKETS)
BATCH_SECONDS = RecentHistogram("tidewater_batch_seconds",
                                "Time per batch from its hand-over to the worker to its place in the send queue: "
                                "engine work, plus waiting for the previous batch's send when sending lags "
                                "(backpressure)", registry=REGISTRY,
                                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
SCORING_BATCH = Histogram("tidewater_scoring_batch_size", "Users (queries) per model call", ["model"],
                          registry=REGISTRY, buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536))
SCORING_SECONDS = Histogram("tidewater_scoring_seconds", "Time per model call (churn scoring, index query)",
                            ["model"], registry=REGISTRY,
                            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60))
WATERMARK = Gauge("tidewater_watermark_seconds", "Event-time watermark per partition", ["partition"],
                  registry=REGISTRY)
PENDING = Gauge("tidewater_merge_pending", "Events waiting in the event-time merge", registry=REGISTRY)
LAG = Gauge("tidewater_consumer_lag", "Records behind the high watermark per input partition (minus committed offset)",
            ["topic", "partition"], registry=REGISTRY)
MODEL_VERSION = Gauge("tidewater_model_info", "Model and index versions in use (value 1)", ["kind", "version"],
                      registry=REGISTRY)

_BY_NAME = {"events_in": EVENTS_IN, "applied": APPLIED, "duplicates_skipped": DUPLICATES,
            "dead_letters": DEAD_LETTERS, "events_out": EVENTS_OUT, "scoring_errors": SCORING_ERRORS,
            "erased": USERS_ERASED, "erased_events_dropped": ERASED_EVENTS_DROPPED, "late_events": LATE_EVENTS,
            "clock_records": CLOCK_RECORDS}


def record_engine_metric(name: str, label: str, n: int) -> None:
    counter = _BY_NAME.get(name)
    if counter is not None:
        counter.labels(label).inc(n)
    elif name == "ticks":
        TICKS.inc(n)
    elif name == "profiles_expired":
        PROFILES_EXPIRED.inc(n)


def observe_engine(model: str, size: float, seconds: float) -> None:
    """One model call of an engine: churn scoring or an index query, with its batch size and duration."""
    SCORING_BATCH.labels(model).observe(size)
    SCORING_SECONDS.labels(model).observe(seconds)


def record_ages(records: Iterable[Any], wall: float) -> list[float]:
    """Seconds from each record's Kafka timestamp (ms) to ``wall``; records without one (None, or Kafka's -1) are
    left out: -1 put 1.8e9 s into the age histograms' sum (found by review)."""
    return [wall - r.timestamp / 1000.0 for r in records if r.timestamp is not None and r.timestamp >= 0]


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``observe`` for a whole batch: one bucket increment per bucket touched instead of a locked update per
    value (a record age per input record was a measurable share of the worker's time). For ages: a negative one
    (the producer's clock ahead of this machine's) counts as 0, so that ``_sum`` never goes down, which
    ``rate()`` read as a counter reset (found by review)."""
    if not values:
        return
    values = [value if value > 0.0 else 0.0 for value in values]
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, n in zip(histogram._buckets, counts):
        if n:
            bucket.inc(n)
    histogram._sum.inc(sum(values))
