"""What the dashboard shows: a cheap, rolling summary of what the worker's batches produced.

``Pipeline._flush`` hands every batch's output records to ``LiveStats.observe`` (one call per flush). Only
churn-score records are decoded in full (two fields, into a small struct); recommendations and offers are
decoded for their versions only and kept raw for the last 20, decoded when a snapshot is taken. Throughput
uses the wall clock: it is a display, never an input to processing (the engines use event time).

``observe`` never raises: a display must not break the batch loop it is called from.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from typing import Any, Iterable, Sequence

import msgspec

from tidewater.settings import Settings

log = logging.getLogger("tidewater.live_stats")

WINDOW_S = 10.0  # throughput and batch latency are over this many seconds of wall time
RECENT = 20  # offers and recommendations kept for the page
HIST_BINS = 10
LAST_BATCHES = 100  # batch latency of an idle worker: over its last batches
VERSIONS_KEPT = 10  # per kind, the versions seen most recently (a daily retrain added one a day, for good)


class _Churn(msgspec.Struct):
    score: float
    model_version: str = ""


class _Versions(msgspec.Struct):
    model_version: str = ""
    index_version: str = ""


class _Item(msgspec.Struct):
    item_id: str
    score: float = 0.0


class _Rec(msgspec.Struct):
    user_id: str
    items: list[_Item] = []
    model_version: str = ""
    index_version: str = ""
    as_of: float = 0.0


class _Offer(msgspec.Struct):
    user_id: str
    offer_type: str = ""
    discount_pct: float = 0.0
    churn_score: float = 0.0
    reason_codes: list[str] = []
    model_version: str = ""
    as_of: float = 0.0


_churn_decoder = msgspec.json.Decoder(_Churn)
_versions_decoder = msgspec.json.Decoder(_Versions)
_rec_decoder = msgspec.json.Decoder(_Rec)
_offer_decoder = msgspec.json.Decoder(_Offer)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of an already sorted sequence; None when it is empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LiveStats:
    """Counts, rolling rates, a churn-score histogram, recent offers/recommendations and versions seen."""

    def __init__(self, settings: Settings, batch_times: Iterable[tuple[float, float]] | None = None,
                 window_s: float = WINDOW_S) -> None:
        self.topic_churn = settings.topic_churn_scores
        self.topic_recs = settings.topic_recommendations
        self.topic_offers = settings.topic_offers
        self.topic_dead_letter = settings.topic_dead_letter
        self.window_s = window_s
        if batch_times is None:  # (wall time, seconds) of recent batches, appended by metrics.BATCH_SECONDS
            from streams import metrics

            batch_times = metrics.BATCH_SECONDS.recent
        self.batch_times = batch_times
        self.started = time.time()
        self.processed = 0
        self.outputs_total = 0
        self.by_topic: Counter[str] = Counter()
        self.churn_hist = [0] * HIST_BINS
        self.recent_offers: deque[bytes] = deque(maxlen=RECENT)
        self.recent_recs: deque[bytes] = deque(maxlen=RECENT)
        # model/index versions seen on outputs: kind -> version -> count; and the last one seen per kind
        self.versions: dict[str, Counter[str]] = {"churn_model": Counter(), "rec_model": Counter(),
                                                  "index": Counter()}
        self.current: dict[str, str] = {}
        self.decode_errors = 0
        self.observe_errors = 0
        # one bin per wall-clock second: [second, events in, outputs]
        self._bins: deque[list[float]] = deque()
        self.lag: dict[str, dict[str, int]] = {}  # topic -> partition -> records behind (set by streams.lag)
        self.lag_updated: float | None = None

    # --- fed by the pipeline --------------------------------------------------------------------------
    def observe(self, outputs: Sequence[tuple[str, Any, bytes, bytes]], processed: int = 0,
                now: float | None = None) -> None:
        """One flush: its output records (topic, partition, key, value) and how many inputs it applied."""
        try:
            self._observe(outputs, processed, time.time() if now is None else now)
        except Exception:  # noqa: BLE001 - a display must never break the batch loop
            self.observe_errors += 1
            if self.observe_errors == 1:
                log.exception("live stats: observe failed (counted, not raised)")

    def _observe(self, outputs: Sequence[tuple[str, Any, bytes, bytes]], processed: int, now: float) -> None:
        self.processed += processed
        self.outputs_total += len(outputs)
        second = math.floor(now)
        bins = self._bins
        if bins and bins[-1][0] == second:
            bins[-1][1] += processed
            bins[-1][2] += len(outputs)
        else:
            bins.append([second, processed, len(outputs)])
        while bins and bins[0][0] <= second - self.window_s - 1:
            bins.popleft()
        if not outputs:
            return
        counts = self.by_topic
        churn, recs, offers = self.topic_churn, self.topic_recs, self.topic_offers
        for topic, _partition, _key, value in outputs:
            counts[topic] += 1
            try:
                if topic == churn:
                    record = _churn_decoder.decode(value)
                    score = min(1.0, max(0.0, record.score))
                    self.churn_hist[min(HIST_BINS - 1, int(score * HIST_BINS))] += 1
                    self._version("churn_model", record.model_version)
                elif topic == recs:
                    versions = _versions_decoder.decode(value)
                    self._version("rec_model", versions.model_version)
                    self._version("index", versions.index_version)
                    self.recent_recs.append(value)
                elif topic == offers:
                    versions = _versions_decoder.decode(value)
                    self._version("churn_model", versions.model_version)
                    self.recent_offers.append(value)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                self.decode_errors += 1

    def _version(self, kind: str, version: str) -> None:
        if version:
            seen = self.versions[kind]
            if version != self.current.get(kind):  # kept in the order last seen, checked only at a switch
                if version in seen:
                    seen[version] = seen.pop(version)
                elif len(seen) >= VERSIONS_KEPT:  # the one seen longest ago goes
                    del seen[next(iter(seen))]
            seen[version] += 1
            self.current[kind] = version

    def set_lag(self, lag: dict[str, dict[str, int]], now: float | None = None) -> None:
        self.lag = lag
        self.lag_updated = time.time() if now is None else now

    # --- read by GET /dashboard.json ------------------------------------------------------------------
    def rates(self, now: float | None = None) -> tuple[float, float]:
        """Events in and outputs per second over the last ``window_s`` seconds (less right after start)."""
        now = time.time() if now is None else now
        since = now - self.window_s
        n_in = n_out = 0.0
        for second, events, outs in self._bins:
            if second + 1 > since:
                n_in += events
                n_out += outs
        # the oldest second counted is counted whole, so the span runs from its start: dividing by window_s read
        # up to 1/window_s high (10 % at the default) just before each second ended
        span = max(1.0, now - max(math.floor(since), self.started))
        return n_in / span, n_out / span

    def batch_latency(self, now: float | None = None) -> dict[str, Any]:
        """p50/p99 of the batches of the last ``window_s`` seconds; when none ran in it (an idle worker), of the
        last ``LAST_BATCHES`` batches (``scope`` says which)."""
        now = time.time() if now is None else now
        since = now - self.window_s
        try:
            recent = list(self.batch_times)
        except (TypeError, ValueError, RuntimeError):  # a concurrent append while copying: next poll
            recent = []
        values = sorted(s for t, s in recent if t >= since)
        scope = f"last {self.window_s:g} s"
        if not values and recent:
            values = sorted(s for _, s in recent[-LAST_BATCHES:])
            scope = f"last {len(values)} batches"
        return {"n": len(values), "scope": scope, "p50_ms": _ms(percentile(values, 50)),
                "p99_ms": _ms(percentile(values, 99))}

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        events_per_s, outputs_per_s = self.rates(now)
        return {
            "now": now,
            "uptime_s": now - self.started,
            "window_s": self.window_s,
            "processed": self.processed,
            "events_per_s": events_per_s,
            "outputs_per_s": outputs_per_s,
            "outputs_total": self.outputs_total,
            "outputs": {
                "churn_scores": self.by_topic.get(self.topic_churn, 0),
                "recommendations": self.by_topic.get(self.topic_recs, 0),
                "offers": self.by_topic.get(self.topic_offers, 0),
                "dead_letters": self.by_topic.get(self.topic_dead_letter, 0),
            },
            "by_topic": dict(self.by_topic),
            "churn_histogram": {"bins": [[i / HIST_BINS, (i + 1) / HIST_BINS] for i in range(HIST_BINS)],
                                "counts": list(self.churn_hist)},
            "recent_offers": [o for o in (_decode_offer(v) for v in reversed(self.recent_offers)) if o],
            "recent_recommendations": [r for r in (_decode_rec(v) for v in reversed(self.recent_recs)) if r],
            "versions": {kind: dict(c) for kind, c in self.versions.items()},
            "current_versions": dict(self.current),
            "batch_latency": self.batch_latency(now),
            "decode_errors": self.decode_errors,
            "observe_errors": self.observe_errors,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _decode_offer(value: bytes) -> dict[str, Any] | None:
    try:
        o = _offer_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return {"user_id": o.user_id, "offer_type": o.offer_type, "discount_pct": o.discount_pct,
            "churn_score": o.churn_score, "reason_codes": list(o.reason_codes), "as_of": o.as_of,
            "model_version": o.model_version}


def _decode_rec(value: bytes) -> dict[str, Any] | None:
    try:
        r = _rec_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return {"user_id": r.user_id, "items": [i.item_id for i in r.items[:3]], "n_items": len(r.items),
            "index_version": r.index_version, "model_version": r.model_version, "as_of": r.as_of}
