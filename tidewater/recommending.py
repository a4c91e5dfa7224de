"""What the engine asks of a recommender, and the two implementations it can hold.

* :class:`VectorRecommender` wraps the trained model from ``models/recs`` (a registry version): every event's
  item is folded into the user's vector in the profile (the incremental update of
  ``models/recs/user_vector.py``), users are assigned to the model's k-means segment, and top-K queries go to
  the FAISS index in one batched call.
* :class:`PartitionPopularity` is the named stand-in used until a model is published: the partition's most
  popular items, without vectors (``baseline:popularity-v1``).

The engine copies the query (vector and exclusions) at the event that triggers a recommendation and asks the
recommender once per batch, so the answer does not depend on where batch boundaries fall (replays stay
byte-identical) and the index sees micro-batches, not single queries.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from tidewater.profile import REC_HISTORY, Profile

log = logging.getLogger("tidewater.recs")

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class Query:
    """One recommendation request, frozen at the event that triggered it."""

    vector: np.ndarray | None  # None: the user has no vector yet (popular items)
    excluded: frozenset[str] | None  # None: the items of ``history`` and ``bought`` (built only if asked)
    history: tuple[str, ...] = ()  # the recs history (``rec_history``), oldest first, for the full-rank re-scoring
    bought: frozenset[str] = frozenset()  # the other items seen, excluded too (not the model's input)

    @property
    def exclude(self) -> frozenset[str]:
        return frozenset(self.history).union(self.bought) if self.excluded is None else self.excluded


class StreamRecommender(Protocol):
    version: str
    index_version: str
    has_vectors: bool
    partition_independent: bool  # answers ignore ``popular``: engines may share one call (engine.answer_recs_together)

    def fold(self, profile: Profile, item_id: str) -> bool: ...

    def refresh(self, profile: Profile) -> None: ...

    def query(self, profile: Profile) -> Query: ...

    def change_since_rec(self, profile: Profile) -> float: ...

    def mark_recommended(self, profile: Profile) -> None: ...

    def recommend_many(self, queries: Sequence[Query], k: int, popular: Sequence[str],
                       popular_counts: Sequence[int]) -> list[Ranked]: ...


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.sqrt(v @ v))  # np.linalg.norm's generic path costs more than the 64-d dot itself
    return v / np.float32(n) if n > 0 else v


def seen_items(profile: Profile) -> frozenset[str]:
    """The items a user is not recommended: those of the ring, and the items bought or clicked that it has
    forgotten (the ring alone let an item bought 64 events ago come back)."""
    return _forgotten(profile).union([e.item_id for e in profile.recent]).difference(_NO_ITEM)


def _forgotten(profile: Profile) -> frozenset[str]:
    """Items bought or clicked that the ring has forgotten."""
    return frozenset(profile.purchased).union(profile.clicked)


_NO_ITEM = (None, "")


def _distinct_items(profile: Profile) -> list[str]:
    """The ring's items, oldest first, each once at its first occurrence: the history of a profile stored before
    ``rec_history``."""
    return list(dict.fromkeys([e.item_id for e in profile.recent if e.item_id]))


def rec_history(profile: Profile) -> list[str]:
    """The recs model's history of the user: distinct items at their first occurrence, oldest first, the last
    ``REC_HISTORY`` (the model was trained and evaluated on histories with repeats collapsed so,
    models/recs/evaluation.py). Kept in the profile as items come (``note_item``): built from the ring, repeats
    and items without a vector crowded the history out, and an item seen again after the ring forgot it came
    back as the newest (found by the train/serve skew review)."""
    return _distinct_items(profile)[-REC_HISTORY:] if profile.rec_history is None else profile.rec_history


def note_item(profile: Profile, item_id: str) -> bool:
    """Record the item of the event just applied in the user's recs history; True at its first occurrence
    (not in the history, the ring before this event, or the items the profile remembers beyond the ring)."""
    history = profile.rec_history
    if history is not None and item_id in history:  # before the scan of the ring: the common repeat, at C speed
        return False
    seen = item_id in profile.purchased or item_id in profile.clicked or _repeated(profile.recent, item_id)
    if history is None:  # stored before the field: the ring's first occurrences, this event's included
        profile.rec_history = rec_history(profile)
        return not seen
    if seen:
        return False
    history.append(item_id)
    if len(history) > REC_HISTORY:
        del history[0]
    return True


def _repeated(recent: Sequence[Any], item_id: str) -> bool:
    """Is ``item_id`` in the ring more than once (the event just applied is one of them)?"""
    seen = False
    for event in recent:
        if event.item_id == item_id:
            if seen:
                return True
            seen = True
    return False


class PartitionPopularity:
    """Most popular items counted in this partition's stream that the user has not seen."""

    version = "baseline:popularity-v1"
    index_version = "none"
    has_vectors = False
    partition_independent = False  # answers come from the partition's own counts

    def fold(self, profile: Profile, item_id: str) -> bool:
        note_item(profile, item_id)  # the history a model rebuilds the vector from when one serves again
        # a model's vector misses this event: marked stale, it is rebuilt from the history when a model serves again
        # (the same version reloaded after a failed load would otherwise take it as current)
        if profile.vec_version:
            profile.vec_version = ""
        profile.segment = None  # a recs model's cluster: none serves (recommendations made meanwhile carry none)
        return False

    def refresh(self, profile: Profile) -> None:
        profile.segment = None  # segments are a recs model's clusters, and no model serves

    def query(self, profile: Profile) -> Query:
        return Query(None, seen_items(profile))

    def change_since_rec(self, profile: Profile) -> float:
        return 0.0  # no vector: only the cadence triggers (the engine asks only recommenders with vectors)

    def mark_recommended(self, profile: Profile) -> None:
        pass

    def recommend_many(self, queries: Sequence[Query], k: int, popular: Sequence[str],
                       popular_counts: Sequence[int]) -> list[Ranked]:
        """Scores are the items' counts at the partition's last ranking."""
        if k <= 0:
            return [[] for _ in queries]
        out = []
        for q in queries:
            row: Ranked = []
            exclude = q.exclude  # built once per query, not per popular item
            for rank, item in enumerate(popular):
                if item not in exclude:
                    row.append((item, float(popular_counts[rank]) if rank < len(popular_counts) else 0.0))
                    if len(row) == k:
                        break
            out.append(row)
        return out


class VectorRecommender:
    """The trained recommender (``models.recs.recommender.Recommender``) as the engine uses it."""

    has_vectors = True
    partition_independent = True  # users without a vector get the model's popular items, not the partition's

    def __init__(self, model: Any, *, index_dir: str | None = None, index_version: str | None = None) -> None:
        self.model = model
        self.version: str = model.version
        self.index_error: Exception | None = None  # why the published index was refused (the model's own serves)
        if index_dir is not None:  # a newer index of the same model (`tidewater index build`)
            try:
                model.swap_index(index_dir)
            except Exception as exc:  # over other vectors, or unreadable (a torn file, another FAISS build):
                # the model's own index serves, and the model loads rather than the previous one staying
                self.index_error = exc
                log.error("could not use index %s: %r; serving recs model %s with its own index", index_dir, exc,
                          model.version)
            else:
                if index_version:  # the registry's name (the file holds the name it was written under)
                    model.index.current.version = index_version
        self.index_version: str = model.index.version or self.version
        self.decay = np.float32(model.decay)
        self.dim = model.dim
        self.has_segments = getattr(model, "segments", None) is not None
        self.reranks = getattr(model, "rerank_candidates", 0) > 0

    # --- the user vector in the profile ------------------------------------------------------------------
    def fold(self, profile: Profile, item_id: str) -> bool:
        """Fold one event's item into the profile's vector; False when the item is unknown to the model."""
        first = note_item(profile, item_id)
        if profile.vec_version != self.version:
            self._rebuild(profile)  # a new model: its vector space differs, rebuild from the history
            return profile.vec_sum is not None
        v = self.model.item_vector(item_id)
        if v is None:
            return False
        if not first:
            # counted at its first occurrence (see rec_history): a user who viewed one item ten times had a
            # vector of that item alone, unlike any history the model learned from; also after the ring forgot it
            return True
        if profile.vec_sum is None:
            profile.vec_sum = bytearray(v.astype(np.float32).tobytes())  # decay * 0 + v
        else:  # models.recs.user_vector.update_one (decay * prev + v, float32), in place in the profile's bytes
            total = np.frombuffer(profile.vec_sum, np.float32)
            total *= self.decay
            total += v
        profile.vec_weight = float(self.decay * profile.vec_weight + 1.0)
        profile.vec_count += 1
        return True

    def _rebuild(self, profile: Profile) -> None:
        state = self.model.recompute_user(rec_history(profile))
        profile.vec_version = self.version
        profile.vec_at_rec = None
        if state is None:  # none of the history's items is in this model's catalogue
            profile.vec_sum, profile.vec_weight, profile.vec_count, profile.segment = None, 0.0, 0, None
            return
        profile.vec_sum = bytearray(np.asarray(state.sum, np.float32).tobytes())
        profile.vec_weight, profile.vec_count = float(state.weight), int(state.count)
        self._segment(profile, np.frombuffer(profile.vec_sum, np.float32))

    def _segment(self, profile: Profile, total: np.ndarray | None) -> None:
        """The k-means segment of the vector (its decayed sum: the argmax of centroid cosines is scale-free); None
        without a vector or without segments in this model (a segment id is only meaningful for the model whose
        k-means made it)."""
        profile.segment = self.model.segment_of(total) if self.has_segments and total is not None else None

    def _sum(self, profile: Profile) -> np.ndarray | None:
        """The decayed sum (a view of the profile's bytes: the user vector is it ÷ ``vec_weight``)."""
        if profile.vec_sum is None or profile.vec_weight <= 0 or profile.vec_version != self.version:
            return None
        return np.frombuffer(profile.vec_sum, np.float32)

    def vector(self, profile: Profile) -> np.ndarray | None:
        total = self._sum(profile)
        return None if total is None else total / np.float32(profile.vec_weight)

    def refresh(self, profile: Profile) -> None:
        """A vector (and segment) from another model version, after a hot reload since the user's last event, is
        rebuilt from the history in this model's space, as the next event would. Silent users have no next event,
        and they are the ones scored for inactivity and offered."""
        if profile.vec_version != self.version and (profile.recent or profile.rec_history):
            self._rebuild(profile)

    def query(self, profile: Profile) -> Query:
        self.refresh(profile)
        # a new array and a tuple: later events do not change the query
        if not self.reranks:  # the history's items too: a few may be past what the profile remembers beside it
            return Query(self.vector(profile), seen_items(profile).union(rec_history(profile)))
        history = tuple(rec_history(profile))  # the vector's history, repeats collapsed
        # exclude = seen_items: the re-ranking passes the history, and the other items seen
        return Query(self.vector(profile), None, history, seen_items(profile).difference(history))

    def change_since_rec(self, profile: Profile) -> float:
        """1 - cosine between the vector now and at the last recommendation (1.0 if there was none). The
        cosine of the sum equals that of the vector (a positive multiple): two dot products, no new arrays. A
        vector of zeros (only items the model has no vector for) has no direction: 0.0, only the cadence
        triggers (it was 1.0, so such a user got a recommendation with every event)."""
        total = self._sum(profile)
        if total is None:
            return 0.0
        norm2 = float(total @ total)
        if norm2 <= 0.0:
            return 0.0
        if profile.vec_at_rec is None:
            return 1.0
        return 1.0 - float(total @ np.frombuffer(profile.vec_at_rec, np.float32)) / math.sqrt(norm2)

    def mark_recommended(self, profile: Profile) -> None:
        """The vector is the reference for "changed enough" from now on; the segment is re-assigned with it
        (segments move slowly: once per recommendation, not per event)."""
        total = self._sum(profile)
        profile.vec_at_rec = None if total is None else _unit(total).tobytes()
        self._segment(profile, total)

    # --- queries -------------------------------------------------------------------------------------
    def recommend_many(self, queries: Sequence[Query], k: int, popular: Sequence[str],
                       popular_counts: Sequence[int]) -> list[Ranked]:
        states = [q.vector for q in queries]
        if self.reranks:  # a query's exclusions are its history's items (``query``): passed once
            bought = [q.bought or None for q in queries]
            return self.model.recommend_many(states, k, bought if any(bought) else None, [q.history for q in queries],
                                             exclude_history=True, decimals=6)
        return self.model.recommend_many(states, k, [q.exclude for q in queries], decimals=6)
