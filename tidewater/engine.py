"""The stream's per-partition processing step, as pure logic with no Kafka and no asyncio.

Bytewax-style hooks: ``on_record`` takes one raw input record, ``on_notify`` releases what the event-time merge
allows, applies it and returns the outputs, the changed profiles and the records that are now done (to ack);
``snapshot`` is the partition state to persist. The Faust agent in ``streams/`` feeds batches in and writes
results out; tests drive the same object directly.

Order of effects per batch (the at-least-once contract): outputs are produced, then changed profiles, the
partition state and the deleted profiles' tombstones are written (changelogged), then the input records are acked.
A crash re-delivers un-acked records; their offsets are at or below the profile's marker when the profile write
made it, so they are skipped, and outputs carry deterministic ids for the downstream to de-duplicate. A restored
state can be behind the restored profiles (a crash before the state landed) or ahead of them (a crash before the
tombstones landed: ``index_profile`` deletes what the state says is deleted).
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import msgspec
import numpy as np

from tidewater import events as ev
from tidewater import heavy_hitters
from tidewater import offers as offer_policy
from tidewater.clock import EventTimeMerger, MergeItem, crossed_ticks, first_tick_after
from tidewater.outputs import (ChurnScore, Recommendation, RetentionOffer, ScoredItem, UserErased, dead_letter,
                               deterministic_id, encode_output)
from tidewater.placeholders import RecencyHeuristic
from tidewater.profile import (DAY, ActivityView, Profile, ProfileConfig, already_applied, apply, new_profile, rfm,
                               source_key)
from tidewater.recommending import PartitionPopularity, Query, StreamRecommender

log = logging.getLogger("tidewater.engine")

MAX_POPULAR_ITEMS = 5000
POPULAR_KEPT = 500
RERANK_EVERY = 1000


class ChurnScorer(Protocol):
    """``score_many`` gives churn probabilities; a scorer that also has ``predict_many`` (probabilities, expected
    purchases in its horizon) lets the offer policy weigh what the customer is still worth."""

    version: str

    def score_many(self, sequences: Sequence[Sequence[Any]], as_of: Sequence[float]) -> Sequence[float]: ...


class ProfileStore(Protocol):
    def get(self, user_id: str) -> Profile | None: ...


@dataclass(frozen=True)
class EngineConfig:
    clicks_topic: str = "clicks"
    purchases_topic: str = "purchases"
    churn_topic: str = "churn-scores"
    recs_topic: str = "recommendations"
    offers_topic: str = "retention-offers"
    erasures_topic: str = "user-erasures"
    dead_letter_topic: str = "dead-letter"
    max_event_bytes: int = 16384
    max_event_lead_s: float = DAY  # an event this far ahead of its record's Kafka timestamp is dead-lettered
    source_idle_s: float = 1.0
    tick_s: float = DAY
    inactivity_gap_s: float = 30 * DAY
    inactivity_rescore_s: float = 30 * DAY  # then again every this much silence ...
    inactivity_rescores: int = 5  # ... this many times (30, 60, ..., 180 days by default)
    erasure_guard_s: float = 7 * DAY  # events of an erased user at or before the request are dropped this long
    profile_ttl_s: float = 0.0  # a profile silent this long (event time) is deleted at a tick; 0: kept for ever
    rec_every_events: int = 5
    rec_change_threshold: float = 0.2  # 1 - cosine of the user vector since the last recommendation
    rec_top_k: int = 10
    offer_items: int = 3
    profile: ProfileConfig = ProfileConfig()
    offers: offer_policy.OfferPolicy = offer_policy.OfferPolicy()
    partitions: int = 1  # of the input topics: each partition enforces its share of the global offer budget

    @property
    def input_topics(self) -> tuple[str, str]:
        return (self.clicks_topic, self.purchases_topic)

    @property
    def topic_types(self) -> dict[str, str]:
        """Input topic -> the event type it carries (erasure requests are accepted on either)."""
        return {self.clicks_topic: "click", self.purchases_topic: "purchase"}

    @classmethod
    def from_settings(cls, s: Any) -> "EngineConfig":
        return cls(
            clicks_topic=s.topic_clicks, purchases_topic=s.topic_purchases, churn_topic=s.topic_churn_scores,
            recs_topic=s.topic_recommendations, offers_topic=s.topic_offers, erasures_topic=s.topic_erasures,
            dead_letter_topic=s.topic_dead_letter,
            max_event_bytes=s.max_event_bytes, max_event_lead_s=s.max_event_lead_s,
            source_idle_s=s.source_idle_ms / 1000.0, tick_s=s.clock_tick_s,
            inactivity_gap_s=s.inactivity_gap_s, inactivity_rescore_s=s.inactivity_rescore_s,
            inactivity_rescores=s.inactivity_rescores, erasure_guard_s=s.erasure_guard_s,
            profile_ttl_s=s.profile_ttl_s,
            rec_every_events=s.rec_every_events,
            rec_change_threshold=s.rec_change_threshold, rec_top_k=s.rec_top_k,
            profile=ProfileConfig(session_gap_s=s.session_gap_s, recent_events=s.recent_events,
                                  window_grace_s=s.window_grace_s),
            offers=offer_policy.OfferPolicy(churn_threshold=s.churn_threshold, cooldown_s=s.offer_cooldown_s,
                                            daily_budget=s.offer_daily_budget, min_value=s.offer_min_value,
                                            high_value=s.offer_high_value, validity_s=s.offer_validity_s,
                                            tiers=offer_policy.parse_tiers(s.offer_tiers)),
            offer_items=s.offer_items,
            partitions=s.partitions,
        )


class PartitionState(msgspec.Struct, kw_only=True):
    """Persisted per partition (its own changelogged table): the clock, the offer budget, popularity counts."""

    partition: int
    watermark: float = 0.0
    next_tick: float = 0.0
    budget_day: int = 0
    budget_used: int = 0
    item_counts: dict[str, int] = {}
    popular: list[str] = []  # ranking of item_counts, refreshed at ticks and every RERANK_EVERY items
    popular_counts: list[int] = []  # their counts at that ranking (the placeholder's scores)
    items_since_rank: int = 0
    inactivity_scanned: list[int] = []  # per inactivity level: the last-activity days already scanned
    # the last-activity days before this one have been expired (``EngineConfig.profile_ttl_s``; 0: none yet, or
    # expiry off: turned on, it then starts from the first indexed day, which a restart fills with every profile)
    expiry_scanned: int = 0
    # the offset marks (``applied``) when the expiry last ran: a stored profile born before them (its ``born_marks``
    # short of them) whose last-activity day is before ``expiry_scanned`` was expired, and is only still stored
    # because a crash lost its tombstone (``PartitionEngine.index_profile``)
    expiry_marks: dict[str, int] = {}
    # users erased recently -> their request's event time: their events at or before it are dropped (a producer's
    # retry or a late event must not rebuild what was erased), until a tick erasure_guard_s after it
    erased: dict[str, float] = {}
    # the same users -> their request's input record ("topic/partition", offset): a request read again after a
    # restart (its offset not yet committed) is a duplicate, and must not delete the profile built since. Only
    # states from before the offset marks have entries (the marks know requests since); they go as marks cover them
    erase_records: dict[str, tuple[str, int]] = {}
    # users erased -> the request's own record ("topic/partition", offset): a stored profile born before it was
    # erased, and is only still stored because a crash lost its tombstone (``PartitionEngine.index_profile``). Kept
    # as long as ``erased``, and past it until a batch after the one that deleted the profile (its tombstone follows
    # that batch's state); the worker persists each in its user's ``erased`` record
    erase_positions: dict[str, tuple[str, int]] = {}
    # per input source ("topic/partition"): the last offset whose partition-level effects (watermark, item
    # counts) this state holds. The worker writes a batch's profiles to the changelog before its state, so after
    # a crash between the two the restored profiles can be ahead of the restored state: their re-read events are
    # duplicates for the profiles and not for the state (``PartitionEngine._process``). None: a state written
    # before this field, taken to hold whatever the profiles hold. The engine upgrades such a state: its marks start
    # at the highest offset of each source among the stored profiles (``index_profile``, which the worker runs over
    # all of them before any record, once: a later restore reads the marks written since). Left None, such a state
    # never got marks: the crash fix behind them never ran, and every erasure was kept in erase_records inside this
    # one record (past Kafka's 1 MiB after ~20,000 erasures within the guard; found by review)
    applied: dict[str, int] | None = None
    # per source: the marks seeded from the stored profiles when this state came without marks. They come from the
    # users whose profiles landed, so they may cover records of users whose profiles did not: a re-read record at or
    # below them is applied even when no profile holds it (``PartitionEngine._process``), in every later life too
    seeded: dict[str, int] = {}


def _finite(values: Sequence[float]) -> bool:
    return bool(np.isfinite(values).all())


def _probabilities(values: Sequence[float]) -> bool:
    """Churn scores must be probabilities: a model answering logits (3.7) would otherwise offer to everyone."""
    a = np.asarray(values, dtype=np.float64)
    return bool(((a >= 0.0) & (a <= 1.0)).all())  # False for NaN as well


@dataclass(frozen=True)
class Answers:
    """A recommender's answers to a batch of queries, and the versions that gave them."""

    ranked: list[list[tuple[str, float]]]
    version: str
    index_version: str


@dataclass
class Record:
    """One raw input record as the Kafka edge hands it over. The worker passes aiokafka's ``ConsumerRecord``s,
    which have these fields too; a record is returned in ``BatchResult.done`` once it is fully applied."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None  # Kafka timestamp, ms


@dataclass(frozen=True)
class Emit:
    topic: str
    key: bytes
    value: bytes


@dataclass
class BatchResult:
    outputs: list[Emit] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)  # users whose stored profile is to be deleted (erased, expired)
    done: list[Any] = field(default_factory=list)
    state_changed: bool = False


@dataclass(frozen=True)
class _PendingRec:
    user_id: str
    ts: float
    event_id: str
    trigger: str
    segment: int | None
    segment_model_version: str | None  # the recommender whose clusters number ``segment``
    query: Query


@dataclass
class _Valid:
    record: Record
    event: ev.InputEvent
    trailing: list[Record] | None = None  # dead letters of the same source read after it: acked after it


class PartitionEngine:
    def __init__(self, partition: int, config: EngineConfig, store: ProfileStore, *,
                 state: PartitionState | None = None, scorer: ChurnScorer | None = None,
                 recommender: StreamRecommender | None = None, now: float = 0.0,
                 metrics: Callable[[str, str, int], None] | None = None,
                 observe: Callable[[str, float, float], None] | None = None) -> None:
        self.partition = partition
        self.config = config
        self.store = store
        self.state = state or PartitionState(partition=partition, applied={})
        # a state from before the offset marks: they start from the stored profiles' offsets (``index_profile``),
        # in this engine's life only: once written with marks, a restore must not raise them to profiles that a
        # crash left ahead of the state (the case the marks are for)
        self._seed_marks = self.state.applied is None
        if self._seed_marks:
            self.state.applied = {}
        self.scorer: ChurnScorer = scorer or RecencyHeuristic()
        self.recommender: StreamRecommender = recommender or PartitionPopularity()
        self.merger: EventTimeMerger[_Valid] = EventTimeMerger(config.input_topics, config.source_idle_s, now)
        self._trailing = 0  # dead letters waiting to be acked after a held record (``_Valid.trailing``)
        self._weakest_item = heavy_hitters.WeakestIndex()  # of state.item_counts, in memory only
        self.expected_type = config.topic_types
        self.counters: Counter[tuple[str, str]] = Counter()
        self._reported: dict[tuple[str, str], int] = {}
        self._metric = metrics or (lambda name, label, n: None)
        self._observe = observe or (lambda name, size, seconds: None)  # scoring/query batch size and time
        # in-memory index for the inactivity timer, rebuilt from the store by ``index_profile``
        self._last_day: dict[str, int] = {}
        self._by_day: dict[int, set[str]] = {}
        self._active_since_tick: set[str] = set()
        # users whose stored profile was offered at a tick the restored state has not fired yet (a crash between
        # a batch's profiles and its state): that tick, fired again, counts their offer in the day's budget
        self._offered_ahead: dict[str, float] = {}
        self._result = BatchResult()
        self._cache: dict[str, Profile] = {}
        self._erased: set[str] = set()  # erased or expired in this batch: the store's copy is not read again
        # profiles made of events all older than the expiry already done (late events of a new or expired user):
        # expired at the next tick, since no scan of the index reaches their day again
        self._expire_next: set[str] = set()
        self._pending_recs: list[_PendingRec] = []
        self._max_pushed_ts = float("-inf")  # latest event time handed to the merge (see ``scoring_bound``)
        self._changed_items: set[str] = set()  # item counts changed since ``take_changed_items``
        self._ranking_changed = False  # the popularity ranking was recomputed since ``take_ranking_changed``
        # users whose entries of state.erased or state.erase_positions changed since ``take_changed_erasures``
        self._changed_erasures: set[str] = set()
        # until the first ``on_notify``: the stored profiles handed to ``index_profile`` are the restored ones
        self._restoring = True
        self._deleted_at_restore = 0  # stored profiles the restored state had deleted (their tombstones lost)

    # --- index of users by last-activity day, for the inactivity timer --------------------------------
    def index_profile(self, profile: Profile | ActivityView) -> None:
        # activity the last score did not see: events applied since it, counted (not compared by time: an event
        # exactly at the tick instant, or a late one, is not in a score at that tick either). Checked before the
        # day test below: a user can be active again within one last-activity day. Exact on a restore too
        if self._seed_marks:  # a state from before the marks holds what the profiles hold: marks from their offsets
            marks, seeded = self.state.applied, self.state.seeded
            for source, offset in profile.applied.items():
                if offset > marks.get(source, -1):  # type: ignore[union-attr]
                    marks[source] = offset  # type: ignore[index]
                if offset > seeded.get(source, -1):
                    seeded[source] = offset
        if self._restoring and self._deleted_by_restored_state(profile):
            self._delete(profile.user_id)  # its tombstone goes out (again) with the next batch
            self._deleted_at_restore += 1
            return
        if profile.n_events > profile.events_at_score:
            self._active_since_tick.add(profile.user_id)
        if profile.last_offer_ts and profile.last_offer_ts >= self.state.next_tick > 0.0:  # only after a restore
            self._offered_ahead[profile.user_id] = profile.last_offer_ts
        day = int(profile.last_ts // DAY)
        if self._last_day.get(profile.user_id) == day:
            return
        self._unindex(profile.user_id)
        if self.config.profile_ttl_s > 0 and day < self.state.expiry_scanned:  # past the expiry already done
            self._expire_next.add(profile.user_id)  # (not left to the index: a level added by a restart with
            return  # more re-scores made it keep the day, which the expiry never scans again; found by review)
        if day < self._scanned_by_every_level():  # no inactivity level will look at that day again
            return
        self._last_day[profile.user_id] = day
        self._by_day.setdefault(day, set()).add(profile.user_id)

    def _deleted_by_restored_state(self, profile: Profile | ActivityView) -> bool:
        """A stored profile that the restored state has deleted (erased or expired). The worker writes a batch's
        tombstones after its state, so that a deletion never lands without the state that made it (the restarted
        engine rebuilt the user from the batch's events alone, re-sent their scores with other values and could
        spend an offer twice; found by review); a crash between the two leaves the state ahead of the stored
        profile. Told apart from a profile that legitimately exists by its birth marks: one born after the deletion
        (events after an erasure, late events after the expiry, profiles restored ahead of the state) was born knowing
        the offset marks at that point, and a deleted one was born before. Event times could not tell: an erasure
        request timed before events that came before it in its topic deletes a profile of later events."""
        state, born = self.state, profile.born_marks
        position = state.erase_positions.get(profile.user_id)
        if position is not None and born.get(position[0], -1) < position[1]:
            return True
        if state.expiry_scanned and int(profile.last_ts // DAY) < state.expiry_scanned:
            # every expiry deletes what it finds older than its horizon, the late-only profiles queued for it too
            # (``_expire_next``): such a profile born before the last expiry is gone. A source whose marks are at or
            # below the seeded ones is left out, as ``_profile`` leaves it out of the birth marks
            seeded = state.seeded
            return any(born.get(source, -1) < offset for source, offset in state.expiry_marks.items()
                       if offset > seeded.get(source, -1))
        return False

    def _unindex(self, user_id: str) -> None:
        day = self._last_day.pop(user_id, None)
        if day is not None:
            self._by_day.get(day, set()).discard(user_id)

    def _scanned_by_every_level(self) -> int:
        """The first last-activity day that some inactivity level, or the expiry, has still to scan (0 while one
        never ran)."""
        scanned = self.state.inactivity_scanned
        if len(scanned) < 1 + max(0, self.config.inactivity_rescores):
            return 0
        if self.config.profile_ttl_s > 0:
            return min(min(scanned), self.state.expiry_scanned)
        return min(scanned)

    def _forget_scanned_days(self) -> None:
        """Drop the days every level has scanned, so that the index holds the users who can still be scored for
        silence, not every user ever seen (a user seen again is indexed under the new day)."""
        done = self._scanned_by_every_level()
        for day in [d for d in self._by_day if d < done]:
            for user_id in self._by_day.pop(day):
                if self._last_day.get(user_id) == day:
                    del self._last_day[user_id]

    # --- hooks ---------------------------------------------------------------------------------------
    def on_record(self, record: Record, now: float) -> None:
        self._count("events_in", record.topic)
        decoded = ev.decode_event(record.value, max_bytes=self.config.max_event_bytes,
                                  expected_type=self.expected_type.get(record.topic), key=record.key, keyed=True)
        if isinstance(decoded, ev.Rejected):
            self._dead_letter(record, decoded)
            return
        lead = self.config.max_event_lead_s
        # ``ev.too_far_ahead`` written out: the hot path, once per record
        if lead and record.timestamp is not None and record.timestamp >= 0 \
                and decoded.ts > record.timestamp / 1000.0 + lead:  # -1: a record without a timestamp
            # the record's own timestamp, not the worker's clock: a re-read of the topic decides the same
            self._dead_letter(record, ev.Rejected(
                "ts_in_future", f"ts {decoded.ts:.3f} is {decoded.ts - record.timestamp / 1000.0:.0f} s after the "
                f"record was produced (TIDEWATER_MAX_EVENT_LEAD_S={lead:g})"))
            return
        self.merger.push(record.topic, decoded.ts, record.offset, _Valid(record, decoded), now)
        if decoded.ts > self._max_pushed_ts:
            self._max_pushed_ts = decoded.ts

    def scoring_bound(self) -> int:
        """At most how many users the next ``on_notify`` can score or expire: 0 when the events waiting in the
        merge cannot cross the next event-time tick (both only happen at ticks). The worker uses it to decide
        whether a batch may run on the event loop without blocking it for long (``streams/app.py``)."""
        waiting = self.merger.pending()
        if not waiting:
            return 0
        cfg, latest = self.config, self._max_pushed_ts
        earliest, next_tick = None, self.state.next_tick
        if next_tick == 0.0:  # the first event sets the first tick: any later event may cross it
            earliest = self._earliest_waiting()
            next_tick = first_tick_after(earliest, cfg.tick_s)
        if latest < next_tick:
            return 0
        bound = len(self._active_since_tick) + waiting  # an event makes its user active for one tick's score
        for _level, start, horizon in self._inactivity_days(latest):  # the users indexed, up to the latest tick
            bound += self._indexed_between(start, horizon)
        # a waiting event's user, silent after it, is scored again at each level (expired) that the waiting events
        # span: a level's tick comes more than its silence after the event (a backlog batch crossing many days
        # under-counted these, as the expiries' test found)
        span = latest - (self._earliest_waiting() if earliest is None else earliest)  # only for a batch at a tick
        silences = [cfg.inactivity_gap_s + level * cfg.inactivity_rescore_s
                    for level in range(1 + max(0, cfg.inactivity_rescores))]
        ttl = cfg.profile_ttl_s
        if ttl > 0:  # not scored, but each expiry is work of the same order (a bulk one at the first tick after
            # expiry is turned on must not run on the event loop)
            silences.append(ttl)
            bound += len(self._expire_next) + self._indexed_between(*self._expiry_days(latest))
        return bound + waiting * sum(silence < span for silence in silences)

    def _earliest_waiting(self) -> float:
        return min(item.ts for queue in self.merger.queues.values() for item in queue)

    def _indexed_between(self, start_day: int, end_day: int) -> int:
        """Users in the activity index whose last activity day is in ``[start_day, end_day)``."""
        return sum(len(self._by_day.get(day, ())) for day in range(start_day, end_day))

    def on_notify(self, now: float, caught_up: frozenset[str] = frozenset(), behind: frozenset[str] = frozenset(),
                  *, defer_recs: bool = False) -> BatchResult:
        """``caught_up``: input topics whose partition has been handed over up to its high watermark; ``behind``:
        those known to have records in Kafka not handed over yet (the merge waits longer for them than for a
        source that may have gone quiet).
        ``defer_recs``: leave the recommendations still queued at the end for :func:`answer_recs_together`, which
        answers those of several engines in one recommender call; they are appended to this result then."""
        if self._restoring and self._deleted_at_restore:  # not counted again: the deletions were, when they ran
            log.info("partition %d: deleted %d stored profiles that the restored state had deleted (a crash lost "
                     "their tombstones); the tombstones go out with this batch", self.partition, self._deleted_at_restore)
        self._restoring = False
        for item in self.merger.pop_ready(now, caught_up, behind):
            self._process(item)
            if item.handle.trailing:
                self._result.done.extend(item.handle.trailing)
                self._trailing -= len(item.handle.trailing)
        if not defer_recs:
            self._flush_recs()
        result, self._result = self._result, BatchResult()
        for user_id, profile in self._cache.items():
            result.profiles[user_id] = profile
        result.erased = self._erased.difference(self._cache)  # erased and not seen again since
        self._cache, self._erased = {}, set()
        return result

    def snapshot(self) -> PartitionState:
        return self.state

    def take_changed_items(self) -> list[tuple[str, int | None]]:
        """The item counts changed since the last call, by item (None: dropped from the counts). The worker
        persists the partition state as a small record, the ranking and one record per item, and writes only
        what changed with each batch: the whole state (up to ``MAX_POPULAR_ITEMS`` counts and the ranking) with
        every live batch was most of the changelog's bytes."""
        counts = self.state.item_counts
        changed = sorted(self._changed_items)
        self._changed_items.clear()
        return [(item, counts.get(item)) for item in changed]

    def take_changed_erasures(self) -> list[tuple[str, float | None, tuple[str, int] | None]]:
        """The recent erasures changed since the last call, by user: the request's time (``state.erased``; None:
        the guard is over) and its position (``state.erase_positions``; None: forgotten). Persisted one record per
        user like the item counts, the two together (``streams.app._erasure_value``): inside the state record,
        rewritten with every batch, a bulk purge grew it past Kafka's record size limit, and the worker failed on
        it at every restart (found by review)."""
        erased, positions = self.state.erased, self.state.erase_positions
        changed = sorted(self._changed_erasures)
        self._changed_erasures.clear()
        return [(user_id, erased.get(user_id), positions.get(user_id)) for user_id in changed]

    def take_ranking_changed(self) -> bool:
        """Whether the popularity ranking (``popular``, ``popular_counts``) changed since the last call: it is
        recomputed at ticks and every ``RERANK_EVERY`` items, and persisted in its own record only then."""
        changed, self._ranking_changed = self._ranking_changed, False
        return changed

    def mark_all_changed(self) -> None:
        """Every count and the ranking are to be written again (a state restored from the one-record format
        of before)."""
        self._changed_items.update(self.state.item_counts)
        self._ranking_changed = True
        self._changed_erasures.update(self.state.erased)
        self._changed_erasures.update(self.state.erase_positions)

    def pending(self) -> int:
        """Records read and not acked yet: those held in the merge and the dead letters waiting behind them. Both
        count towards the worker's bound on held records (dead letters behind a held record were left out: a
        stream of bad records behind one held event grew without bound, raw values and all; found by review)."""
        return self.merger.pending() + self._trailing

    def deletions_waiting(self) -> int:
        """Stored profiles that the restored state had deleted (a crash lost their tombstones), deleted at the
        restore, whose tombstones go out with the next batch: the worker runs one for them without waiting for a
        record. An idle partition kept such a profile on its disk, and served it at GET /users/{id}/profile (an
        erased user's included), until the partition's next event."""
        return len(self._erased) if self._restoring else 0

    def sources_ahead(self) -> list[str]:
        """The input topics whose records wait in the merge for another topic's: fetching more of them only adds
        to what is held (the worker stops fetching them at its bound, ``streams.ingress.hold_back``)."""
        return self.merger.waiting_sources()

    def drop_pending(self) -> None:
        """On revocation: buffered records are not acked, so the new owner re-reads them."""
        self.merger.drop()
        self._trailing = 0

    # --- processing ----------------------------------------------------------------------------------
    def _profile(self, user_id: str) -> Profile:
        profile = self._existing_profile(user_id)
        if profile is None:
            profile = self._cache[user_id] = new_profile(user_id)
            # born knowing the partition's offset marks: every record they cover came before it (a source's
            # records come in offset order), so one read again after a crash is not applied into it. Without
            # them, a late event of an expired (or erased) user, re-read after a crash that stored the user's new
            # profile but not the state, went into the new profile (found by a fuzz of crash points after the
            # review of profile expiry). A source's marks seeded from the stored profiles of a state from before the
            # marks count only once past the seeded offset: below it, records of users whose profiles never landed
            # are still to be applied
            marks, seeded = self.state.applied, self.state.seeded
            if marks:
                profile.born_marks = {source: offset for source, offset in marks.items()
                                      if offset > seeded.get(source, -1)}
        return profile

    def _existing_profile(self, user_id: str) -> Profile | None:
        """The user's profile, cached or stored (cached from here on), or None: none is created."""
        profile = self._cache.get(user_id)
        if profile is None:
            profile = None if user_id in self._erased else self.store.get(user_id)
            if profile is not None:
                self._cache[user_id] = profile
        return profile

    def _process(self, item: MergeItem[_Valid]) -> None:
        record, event = item.handle.record, item.handle.event
        state = self.state
        if self._seed_marks:  # marks come from the profiles stored at the restore only (``index_profile`` runs over
            self._seed_marks = False  # them before any record): seeded from the ones processed since, they exempted
            # those records from the re-read skip below, and an erased user's click came back (found by review)
        if state.next_tick == 0.0:
            state.next_tick = first_tick_after(event.ts, self.config.tick_s)
            self._result.state_changed = True
        ticks, state.next_tick = crossed_ticks(state.next_tick, event.ts, self.config.tick_s)
        if ticks:  # the clock moved (even for a duplicate event, which changes nothing else): persist it
            self._result.state_changed = True
        for tick in ticks:
            self._on_tick(tick)
        if isinstance(event, ev.Clock):  # the partition's time moved; no user's event
            if event.ts > state.watermark:
                state.watermark = event.ts
                self._result.state_changed = True
            self._count("clock_records", record.topic)
            self._result.done.append(record)
            return
        if isinstance(event, ev.Erase):
            source = source_key(record.topic, record.partition)
            applied = state.erase_records.get(event.user_id)
            marks = state.applied
            # re-read after a restart: already applied. erase_records expires with the guard (event time), and a
            # re-read reaches back to the last commit (wall-clock time): the offset marks never expire
            if (applied is not None and applied[0] == source and record.offset <= applied[1]) or \
                    (marks is not None and record.offset <= marks.get(source, -1)):
                self._count("duplicates_skipped", record.topic)
                self._result.done.append(record)
                return
            if marks is not None:
                marks[source] = record.offset  # a source's records come in offset order: this is forward
            erased_at = state.erased.get(event.user_id)
            if erased_at is not None and event.ts <= erased_at:
                # already erased up to this time (a producer's retry at a new offset, or an older request): the
                # profile holds only events timed after that erasure, which this request does not cover. It is
                # confirmed (the same id for a retry) and nothing is deleted
                self._confirm_erasure(event)
                self._count("duplicates_skipped", record.topic)
                self._result.state_changed = True  # its offset is in the marks: persisted with the state
            else:
                self._erase(event, record.topic, source, record.offset)
            if event.ts > state.watermark:
                state.watermark = event.ts
            self._result.done.append(record)
            return
        erased_at = state.erased.get(event.user_id)
        source = source_key(record.topic, record.partition)
        marks = state.applied
        if erased_at is not None and event.ts <= erased_at:
            self._count("erased_events_dropped", record.topic)  # not dead-lettered: that would keep the data
            if marks is not None and record.offset > marks.get(source, -1):
                # read: re-read after a crash that stored this state but not the acks, once the guard has expired
                # (in this very batch), it was applied into a new profile (found by a fuzz of crash points)
                marks[source] = record.offset
                self._result.state_changed = True
            self._result.done.append(record)
            return
        # every new record; a re-read one too when the restored state is behind the restored profile
        new_to_state = marks is not None and record.offset > marks.get(source, -1)
        if marks is not None and not new_to_state and record.offset > state.seeded.get(source, -1):
            held = self._existing_profile(event.user_id)
            if held is None or not already_applied(held, source, record.offset):
                # processed before the stored state (its marks cover it), yet no stored profile holds it: its user
                # was erased since, or it was dropped or a duplicate then. Applied again, a re-read after the
                # erasure's guard expired built the erased user's profile back (found by a fuzz of crashes and
                # restores). Not below marks seeded from the profiles (``PartitionState.seeded``): they could cover a
                # record of a user whose profile never landed (the first version exempted only the engine that
                # seeded them; found by review)
                self._count("duplicates_skipped", record.topic)
                self._result.done.append(record)
                return
        profile = self._profile(event.user_id)
        late_before = profile.late_events
        if new_to_state:  # forward only: a re-read record set it back, and the next re-read ones looked new
            marks[source] = record.offset  # type: ignore[index]
        applied = apply(profile, event, source, record.offset, state.watermark, self.config.profile)
        if applied:
            self._count("applied", record.topic)
            if profile.late_events != late_before:
                self._count("late_events", record.topic)
            if event.ts > state.watermark:
                state.watermark = event.ts
            self._result.state_changed = True
            if event.item_id:
                self._count_item(event.item_id)
                try:
                    self.recommender.fold(profile, event.item_id)
                except Exception:  # a broken model must not stop the stream: the vector is rebuilt later
                    self._recs_hook_failed("fold", profile, event.item_id)
            self.index_profile(profile)
            trigger = self._rec_trigger(profile)
            if trigger is not None:
                self._recommend(profile, event, trigger)
        else:
            self._count("duplicates_skipped", record.topic)
            if new_to_state and already_applied(profile, source, record.offset):
                # re-read after a crash that stored this batch's profiles and not its state: the profile and the
                # outputs have the event, the partition's time and item counts do not (they stayed lower for good)
                if event.ts > state.watermark:
                    state.watermark = event.ts
                if event.item_id:
                    self._count_item(event.item_id)
                self.index_profile(profile)  # active again for the next tick, as its events were
            if new_to_state:
                self._result.state_changed = True  # the state's offset moved: persisted with it
        self._result.done.append(record)

    def _erase(self, request: ev.Erase, topic: str, source: str, offset: int) -> None:
        """Forget a user: the profile goes (deleted from the store after this batch), and so do the timers'
        entries, so no later tick scores or offers for them; a ``UserErased`` record confirms it. Outputs already
        triggered by earlier events (queued recommendations) still go out: when they are answered must not
        depend on batch boundaries. The item counts keep the user's items (aggregates, not personal data)."""
        user_id = request.user_id
        self._confirm_erasure(request)
        erased = self.state.erased
        erased[user_id] = max(request.ts, erased.get(user_id, request.ts))
        self.state.erase_positions[user_id] = (source, offset)  # a profile born before it is the erased one
        self._changed_erasures.add(user_id)
        self._delete(user_id)
        self._count("erased", topic)
        self._result.state_changed = True

    def _delete(self, user_id: str) -> None:
        """The profile goes (a tombstone after this batch, and the store's copy is not read again) and so do the
        timers' entries. An offer it made at a tick the restored state has still to fire (``_offered_ahead``)
        still counts in that day's budget: it was sent."""
        self._cache.pop(user_id, None)
        self._erased.add(user_id)
        self._active_since_tick.discard(user_id)
        self._unindex(user_id)

    def _confirm_erasure(self, request: ev.Erase) -> None:
        self._flush_recs()  # the queued answers go out before the confirmation, whatever the batching
        self._emit(self.config.erasures_topic, request.user_id, UserErased(
            event_id=deterministic_id("erase", request.user_id, request.event_id), user_id=request.user_id,
            as_of=request.ts, request_event_id=request.event_id))

    def _expire_erasures(self, tick: float) -> None:
        """Forget erasure requests older than the guard: the user id is kept no longer than the guard needs."""
        erased = self.state.erased
        if erased:
            horizon = tick - self.config.erasure_guard_s
            for user_id in [u for u, ts in erased.items() if ts < horizon]:
                del erased[user_id]
                self.state.erase_records.pop(user_id, None)
                self._changed_erasures.add(user_id)
        positions = self.state.erase_positions
        if positions:  # kept while the profile's tombstone may not have landed: it follows this batch's state (a
            # guard ending in the batch that erased the user, or at the first batch after a restore that found the
            # profile still stored), and the state persisted without the position could not tell the profile apart
            for user_id in [u for u in positions if u not in erased and u not in self._erased]:
                del positions[user_id]
                self._changed_erasures.add(user_id)
        records, marks = self.state.erase_records, self.state.applied or {}
        if records:  # an upgraded state's requests that the offset marks now cover: known by them from here
            for user_id in [u for u, (source, offset) in records.items() if offset <= marks.get(source, -1)]:
                del records[user_id]

    def _expire_profiles(self, tick: float) -> None:
        """Delete the profiles silent for ``profile_ttl_s`` (event time): without it a partition's store keeps
        every user ever seen. The validated settings put the expiry after the last inactivity score. Not an
        erasure: nothing is confirmed and nothing guarded; a user seen again starts a new profile."""
        ttl = self.config.profile_ttl_s
        if ttl <= 0:
            # off: turned on again, it starts over from every stored profile. Not while this batch deletes a profile
            # a restore found expired: its tombstone follows this batch's state, which must still tell it apart
            if self.state.expiry_scanned and not self._erased:
                self.state.expiry_scanned, self.state.expiry_marks = 0, {}
                self._result.state_changed = True
            return
        start_day, horizon_day = self._expiry_days(tick)
        # those still unindexed (no newer event since) and stored (not erased since)
        expired = [u for u in sorted(self._expire_next)
                   if u not in self._last_day and self._existing_profile(u) is not None]
        self._expire_next.clear()
        for day in range(start_day, horizon_day):
            expired.extend(sorted(self._by_day.get(day, ())))
        for user_id in expired:
            self._delete(user_id)
        if expired:
            self._count("profiles_expired", "clock", len(expired))
        if horizon_day > self.state.expiry_scanned:
            self.state.expiry_scanned = horizon_day
        if self.state.expiry_marks != self.state.applied:  # every profile born before now has been looked at
            self.state.expiry_marks = dict(self.state.applied or {})
        self._result.state_changed = True

    def _count_item(self, item_id: str) -> None:
        displaced = heavy_hitters.count(self.state.item_counts, item_id, MAX_POPULAR_ITEMS, self._weakest_item)
        self._changed_items.add(item_id)
        if displaced is not None:
            self._changed_items.add(displaced)
        self.state.items_since_rank += 1
        if self.state.items_since_rank >= RERANK_EVERY or not self.state.popular:
            self._rerank()

    def _rerank(self) -> None:
        self._flush_recs()  # pending queries are answered with the ranking they were asked under
        # == sorted(...)[:POPULAR_KEPT], without sorting the long tail
        ranked = heapq.nsmallest(POPULAR_KEPT, self.state.item_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self.state.popular = [item for item, _ in ranked]
        self.state.popular_counts = [n for _, n in ranked]
        self.state.items_since_rank = 0
        self._ranking_changed = True

    def _rec_trigger(self, profile: Profile) -> str | None:
        if profile.events_since_rec >= self.config.rec_every_events:
            return "cadence"
        recommender = self.recommender
        if recommender.has_vectors and self._recs_hook("change_since_rec", profile) >= self.config.rec_change_threshold:
            return "vector_change"
        return None

    def _recommend(self, profile: Profile, event: ev.Event, trigger: str) -> None:
        """Queue a recommendation; its query (vector, exclusions) is frozen now, answered in ``_flush_recs``."""
        query = self._recs_hook("query", profile)
        self._recs_hook("mark_recommended", profile)  # also re-assigns the segment
        self._pending_recs.append(_PendingRec(profile.user_id, event.ts, event.event_id, trigger, profile.segment,
                                              self._segment_model(profile), query))
        profile.events_since_rec = 0
        profile.last_rec_ts = event.ts

    def _ask(self, queries: list[Query], k: int, *, fallback: bool = True) -> Answers | None:
        """One batched query (the partition's popularity ranking is the fallback for users without a vector). A
        recommender that fails (a broken model or index) must not stop the stream: the query is answered from the
        partition's popularity counts, and those answers carry that placeholder's version. ``fallback`` False:
        None on failure instead (the caller falls back per partition)."""
        started = time.perf_counter()
        recommender = self.recommender
        if k <= 0:  # TIDEWATER_OFFER_ITEMS=0: offers without items (the popularity path had read 0 as "no limit")
            return Answers([[] for _ in queries], recommender.version, recommender.index_version)
        try:
            answers = Answers(recommender.recommend_many(queries, k, self.state.popular, self.state.popular_counts),
                              recommender.version, recommender.index_version)
        except Exception:
            self._count("scoring_errors", recommender.version)
            if not fallback:
                return None
            answers = self._popular_answers(queries, k)
        self._observe("recommend", len(queries), time.perf_counter() - started)
        return answers

    def _popular_answers(self, queries: list[Query], k: int) -> Answers:
        """The placeholder's answers from this partition's popularity counts: a failed recommender's stand-in."""
        placeholder = PartitionPopularity()
        return Answers(placeholder.recommend_many(queries, k, self.state.popular, self.state.popular_counts),
                       placeholder.version, placeholder.index_version)

    def _recs_hook(self, name: str, *args: Any) -> Any:
        """The recommender's per-profile hook ``name`` (query, refresh, mark_recommended, change_since_rec). One
        that raises must not stop the stream, where the worker would stop on the same record at every restart:
        the popularity placeholder's hook answers instead (no vector: the profile's vector and segment are
        rebuilt when the model works again), and ``scoring_errors`` counts it, as for a failed query."""
        try:
            return getattr(self.recommender, name)(*args)
        except Exception:
            return self._recs_hook_failed(name, *args)

    def _recs_hook_failed(self, name: str, *args: Any) -> Any:
        self._count("scoring_errors", self.recommender.version)
        return getattr(PartitionPopularity(), name)(*args)

    def _segment_model(self, profile: Profile) -> str | None:
        """The version of the recommender whose k-means numbers the profile's segment (None without a segment):
        segments are renumbered with each retrain, and an answer's own version can be a fallback's."""
        return None if profile.segment is None else self.recommender.version

    def _flush_recs(self) -> None:
        pending, self._pending_recs = self._pending_recs, []
        if pending:
            self._emit_recs(pending, self._ask([p.query for p in pending], self.config.rec_top_k), self._result)

    def _emit_recs(self, pending: list[_PendingRec], answers: "Answers", into: BatchResult) -> None:
        for p, ranked in zip(pending, answers.ranked):
            if not ranked:
                continue
            self._emit(self.config.recs_topic, p.user_id, Recommendation(
                event_id=deterministic_id("rec", p.user_id, p.event_id),
                user_id=p.user_id, as_of=p.ts, source_event_id=p.event_id,
                items=[ScoredItem(i, s) for i, s in ranked], model_version=answers.version,
                index_version=answers.index_version, trigger=p.trigger,  # type: ignore[arg-type]
                segment=p.segment, segment_model_version=p.segment_model_version), into)

    def _on_tick(self, tick: float) -> None:
        """Score users active since the last tick, and users whose silence just crossed an inactivity level
        (the gap, then every ``inactivity_rescore_s`` more, ``inactivity_rescores`` times): risk is re-assessed
        as silence grows, because a customer who stops coming produces no events."""
        self._count("ticks", "clock")
        # the recommendations of earlier events go out before this tick's scores and offers, whatever the batching
        # (a batch's end or a rerank used to send them: one record per batch put them first, one batch after;
        # found by a fuzz of batch sizes)
        self._flush_recs()
        self._expire_erasures(tick)
        self._score_at_tick(tick)
        # after the scores: a TTL less than a tick above the last inactivity score (or ticks a clock jump skipped)
        # brings both due at one tick, and the silent customer's last score and offer went with the profile
        # (found by review)
        self._expire_profiles(tick)

    def _score_at_tick(self, tick: float) -> None:
        if self.state.items_since_rank:
            self._rerank()
        candidates: dict[str, tuple[str, int]] = {u: ("activity", -1) for u in sorted(self._active_since_tick)}
        self._active_since_tick.clear()
        self._scan_inactive(tick, candidates)
        if self._offered_ahead:  # before the return below: a tick fired again may have no candidate left (its
            self._count_offers_ahead(tick)  # users' profiles say they were scored), and its offers still count
        if not candidates:
            return
        users = list(candidates)
        profiles = [self._profile(u) for u in users]
        keep = [i for i, p in enumerate(profiles)
                if candidates[users[i]][0] == "activity" or p.inactivity_level <= candidates[users[i]][1]]
        if keep:  # (an empty state too: a crash before its first write leaves profiles ahead of it)
            keep = self._not_scored_before_restore(tick, keep, users, profiles, candidates)
        if not keep:
            return
        scores, expected, version = self._score([profiles[i] for i in keep], tick)
        horizon = getattr(self.scorer, "horizon_days", None) if version == self.scorer.version else None
        day = int(tick // DAY)
        if self.state.budget_day != day:
            self.state.budget_day, self.state.budget_used = day, 0
        wanted: list[tuple[Profile, float, offer_policy.OfferDecision]] = []
        for j, i in enumerate(keep):
            profile, (trigger, level) = profiles[i], candidates[users[i]]
            score = round(float(scores[j]), 6)
            exp = None if expected is None else round(float(expected[j]), 4)
            profile.last_scored_ts = tick
            profile.events_at_score = profile.n_events
            self._recs_hook("refresh", profile)  # the segment stamped below is the current model's
            if trigger == "inactivity":
                profile.inactive_flagged_ts = tick
                profile.inactivity_level = level + 1
            features = rfm(profile, tick)
            drop = offer_policy.activity_dropped(profile, tick)
            self._emit(self.config.churn_topic, profile.user_id, ChurnScore(
                event_id=deterministic_id("churn", profile.user_id, tick, trigger),
                user_id=profile.user_id, as_of=tick, score=score, trigger=trigger,  # type: ignore[arg-type]
                model_version=version, recency_days=features["recency_days"],
                frequency=features["frequency"], monetary=features["monetary"], segment=profile.segment,
                expected_purchases=exp, activity_drop=drop, segment_model_version=self._segment_model(profile),
                horizon_days=horizon))
            # long_inactivity is the silence, whatever triggered the score: a late event (timed weeks ago) makes a
            # silent customer "active" at the next tick (the offline check, tidewater/offer_check.py, decides alike)
            silent = trigger == "inactivity" or tick - profile.last_ts >= self.config.inactivity_gap_s
            decision = offer_policy.decide(profile, score, tick, "inactivity" if silent else "activity", 0,
                                           self.config.offers, expected_purchases=exp)  # budget: the whole tick's
            if decision is not None:
                wanted.append((profile, score, decision))
        share = offer_policy.partition_budget(self.config.offers.daily_budget, self.partition, self.config.partitions,
                                              day)  # this partition's share of the global daily budget today
        offered = offer_policy.within_budget(wanted, share - self.state.budget_used)
        self.state.budget_used += len(offered)
        for profile, _, _ in offered:
            profile.last_offer_ts = tick
        if offered:
            items = self._ask([self._recs_hook("query", p) for p, _, _ in offered], self.config.offer_items)
            chosen = self.config.offer_items > 0  # else no recommender chose items: no versions named
            for (profile, score, decision), ranked in zip(offered, items.ranked):
                self._emit(self.config.offers_topic, profile.user_id, RetentionOffer(
                    event_id=deterministic_id("offer", profile.user_id, tick),
                    user_id=profile.user_id, as_of=tick, offer_type=decision.offer_type,
                    discount_pct=decision.discount_pct, churn_score=score,
                    reason_codes=list(decision.reason_codes), items=[ScoredItem(i, s) for i, s in ranked],
                    model_version=version, expires_at=decision.expires_at, segment=profile.segment,
                    customer_value=decision.customer_value, recs_model_version=items.version if chosen else None,
                    recs_index_version=items.index_version if chosen else None,
                    segment_model_version=self._segment_model(profile)))
        self._result.state_changed = True

    def _count_offers_ahead(self, tick: float) -> None:
        """A tick fired again after a restore whose profiles were ahead of its state: the offers it made then are
        in Kafka and in those profiles, and count in the day's budget as they did."""
        offered = [user for user, ts in self._offered_ahead.items() if ts == tick]
        for user in [user for user, ts in self._offered_ahead.items() if ts <= tick]:
            del self._offered_ahead[user]
        if offered:
            day = int(tick // DAY)
            if self.state.budget_day != day:
                self.state.budget_day, self.state.budget_used = day, 0
            self.state.budget_used += len(offered)
            self._result.state_changed = True

    def _not_scored_before_restore(self, tick: float, keep: list[int], users: list[str], profiles: list[Profile],
                                   candidates: dict[str, tuple[str, int]]) -> list[int]:
        """``keep`` less the profiles that a tick fired again after a restore must not score: those scored at this
        tick before the crash (their score and offer are in Kafka), and those ahead of the restored state with no
        such score: the crashed batch did not score them at this tick, and the profile holds events that came after
        it (active ones stay active for the next tick; one indexed for silence by a late event of the crashed batch
        was scored for inactivity here, where the uninterrupted run was not: found by review). Only a crash between
        a batch's profiles and its state gives either."""
        marks = self.state.applied or {}
        out = []
        for i in keep:
            profile = profiles[i]
            if profile.last_scored_ts >= tick:
                continue
            if any(offset > marks.get(source, -1) for source, offset in profile.applied.items()):
                if candidates[users[i]][0] == "activity":
                    self._active_since_tick.add(users[i])
                continue  # for silence too: the profile's last activity includes events this tick came before
            out.append(i)
        return out

    def _scan_inactive(self, tick: float, candidates: dict[str, tuple[str, int]]) -> None:
        """Users whose last activity day has just fallen behind an inactivity level's horizon."""
        scanned = self.state.inactivity_scanned
        for level, start_day, horizon_day in self._inactivity_days(tick):
            for day in range(start_day, horizon_day):
                for user_id in sorted(self._by_day.get(day, ())):
                    candidates.setdefault(user_id, ("inactivity", level))
            if level == len(scanned):
                scanned.append(0)
            # the days before the horizon are done at this level; not the first indexed day when the horizon has
            # not reached it yet (that day depends on what the index holds, which a restart changes: a late event
            # indexed before it was then never scanned, and only on a worker that had restarted)
            scanned[level] = horizon_day
        self._forget_scanned_days()

    def _expiry_days(self, tick: float) -> tuple[int, int]:
        """The last-activity days ``[start, horizon)`` whose profiles a tick at ``tick`` expires (``start``: the
        first indexed day when no expiry ran yet)."""
        horizon_day = int((tick - self.config.profile_ttl_s) // DAY)
        return self.state.expiry_scanned or min(self._by_day, default=horizon_day), horizon_day

    def _inactivity_days(self, tick: float) -> list[tuple[int, int, int]]:
        """Per inactivity level (the gap, then each re-score): the last-activity days ``[start, horizon)`` that a
        tick at ``tick`` has not scanned yet; ``start`` is the first indexed day for a level never scanned."""
        cfg, scanned = self.config, self.state.inactivity_scanned
        out = []
        for level in range(1 + max(0, cfg.inactivity_rescores)):
            horizon_day = int((tick - cfg.inactivity_gap_s - level * cfg.inactivity_rescore_s) // DAY)
            start_day = (scanned[level] if level < len(scanned) else 0) or min(self._by_day, default=horizon_day)
            out.append((level, start_day, horizon_day))
        return out

    def _score(self, profiles: list[Profile], tick: float) -> tuple[Sequence[float], Sequence[float] | None, str]:
        """One scoring call for the whole tick (the scorer micro-batches inside); the placeholder on failure."""
        sequences = [p.recent for p in profiles]  # scorers take the profile's ring as is
        as_of = [tick] * len(profiles)
        started = time.perf_counter()
        try:
            predict = getattr(self.scorer, "predict_many", None)
            if predict is not None:
                scores, expected = predict(sequences, as_of)
            else:
                scores, expected = self.scorer.score_many(sequences, as_of), None
            version = self.scorer.version
            ok = (len(scores) == len(profiles) and _probabilities(scores)
                  and (expected is None or (len(expected) == len(profiles) and _finite(expected))))
        except Exception:  # a broken model must not stop the stream: score this tick with the placeholder
            ok = False
        if not ok:  # raised, or answered with NaN, infinity, a score that is not a probability or too few/many
            self._count("scoring_errors", self.scorer.version)
            fallback = RecencyHeuristic()
            scores, expected, version = fallback.score_many(sequences, as_of), None, fallback.version
        self._observe("churn", len(profiles), time.perf_counter() - started)
        return scores, expected, version

    def _emit(self, topic: str, user_id: str, record: msgspec.Struct, into: BatchResult | None = None) -> None:
        (self._result if into is None else into).outputs.append(Emit(topic, user_id.encode(), encode_output(record)))
        self._count("events_out", topic)

    def _dead_letter(self, record: Record, rejected: ev.Rejected) -> None:
        letter = dead_letter(rejected, record.topic, record.partition, record.offset, record.key, record.value)
        # keyed by the original key, or by its digest when the letter could not carry it either
        key = (record.key or b"") if letter.key_sha256 is None else letter.key_sha256.encode()
        self._result.outputs.append(Emit(self.config.dead_letter_topic, key, encode_output(letter)))
        self._count("dead_letters", rejected.reason)
        queue = self.merger.queues.get(record.topic)
        if queue:  # an earlier record of this source is held in the merge: acked after it, never before it.
            # Faust commits past a gap of one record at the head of its acked offsets (and past any gap while
            # nothing was committed yet), so a dead letter acked first would make it skip the held record
            held = queue[-1].handle
            if held.trailing is None:
                held.trailing = []
            held.trailing.append(record)
            self._trailing += 1
        else:
            self._result.done.append(record)

    def _count(self, name: str, label: str, n: int = 1) -> None:
        self.counters[(name, label)] += n

    def drain_metrics(self) -> None:
        """Push the counts since the last call to the metrics callback (once per batch, not per event)."""
        for key, total in self.counters.items():
            delta = total - self._reported.get(key, 0)
            if delta:
                self._metric(key[0], key[1], delta)
                self._reported[key] = total


def can_answer_together(engines: Sequence[Any]) -> bool:
    """Whether :func:`answer_recs_together` applies: partition engines sharing one recommender whose answers do
    not depend on the partition (``partition_independent``), with one top k."""
    if not engines or not all(isinstance(e, PartitionEngine) for e in engines):
        return False
    first = engines[0]
    return getattr(first.recommender, "partition_independent", False) and all(
        e.recommender is first.recommender and e.config.rec_top_k == first.config.rec_top_k for e in engines)


def answer_recs_together(engines: Sequence[PartitionEngine], results: Sequence[BatchResult]) -> None:
    """The recommendations that ``on_notify(defer_recs=True)`` left queued in several engines, answered in one
    recommender call and appended to each engine's result (``results[i]`` is ``engines[i]``'s). A worker owns many
    partitions and live batches are small: one call per batch instead of one per partition, where the per-call
    cost (numpy and FAISS set-up) dominates. The answers are the same as each engine's own: the engines share one
    recommender whose answers do not depend on the partition (``partition_independent``)."""
    if not engines:
        return
    if not can_answer_together(engines):
        raise ValueError("engines answered together must share a partition-independent recommender and top k")
    first = engines[0]
    pending = [e._pending_recs for e in engines]
    for e in engines:
        e._pending_recs = []
    queries = [p.query for rows in pending for p in rows]
    if not queries:
        return
    answers = first._ask(queries, first.config.rec_top_k, fallback=False)  # its ranking is ignored (independent)
    at = 0
    for engine, rows, result in zip(engines, pending, results):
        if answers is None:  # the recommender failed (counted once): each partition's own popularity counts answer
            if rows:
                engine._emit_recs(rows, engine._popular_answers([p.query for p in rows], engine.config.rec_top_k),
                                  result)
            continue
        engine._emit_recs(rows, Answers(answers.ranked[at:at + len(rows)], answers.version, answers.index_version),
                          result)
        at += len(rows)


def run_to_completion(engine: PartitionEngine, records: Iterable[Record], *, batch: int = 1000,
                      end_now: float = 1e18) -> BatchResult:
    """Drive an engine over finite input (tests and offline replays): the merged result of every batch."""
    total = BatchResult()
    pending: list[Record] = []

    def flush(now: float) -> None:
        for r in pending:
            engine.on_record(r, now)
        pending.clear()
        res = engine.on_notify(now)
        if hasattr(engine, "take_changed_items"):  # what the worker writes of the state: taken, as it takes them
            # (never taken, the sets held every item and erasure of a long replay: found by a soak)
            engine.take_changed_items(), engine.take_ranking_changed(), engine.take_changed_erasures()
        if hasattr(engine.store, "__setitem__"):  # write back, as the worker does after every batch
            for user_id, profile in res.profiles.items():
                engine.store[user_id] = profile  # type: ignore[index]
            for user_id in res.erased:
                engine.store.pop(user_id, None)  # type: ignore[attr-defined]
        total.outputs.extend(res.outputs)
        for user_id in res.erased:
            total.profiles.pop(user_id, None)
        total.profiles.update(res.profiles)
        total.erased = (total.erased - res.profiles.keys()) | res.erased
        total.done.extend(res.done)
        total.state_changed |= res.state_changed

    for record in records:
        pending.append(record)
        if len(pending) >= batch:
            flush(0.0)
    flush(0.0)
    flush(end_now)  # every source idle: release the rest
    return total
