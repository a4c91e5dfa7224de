"""Streaming user vector: an exponentially decayed mean of item query vectors.

State (lives in every user profile, JSON-able): ``{"sum": [float32 x d], "weight": float, "count": int}``
where ``sum = sum_k lam^k v_{n-1-k}`` and ``weight = sum_k lam^k`` over the events seen so far.
The user vector is ``sum / weight``.

* :func:`update_one` folds in one new event: ``sum' = lam*sum + v``, ``weight' = lam*weight + 1``.
* :func:`recompute` rebuilds the state from the last ``window`` events.

Both agree exactly (up to float32 rounding) while the user has at most ``window`` events; beyond that
the incremental state still carries the older events with total relative weight <= ``lam**window``
(5.2e-3 for the default lam=0.9, window=50; 1.4e-5 for lam=0.8), so the two vectors differ by at most about that much.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class UserState:
    sum: tuple[float, ...]
    weight: float
    count: int

    def vector(self) -> np.ndarray:
        s = np.asarray(self.sum, dtype=np.float32)
        return s / np.float32(self.weight) if self.weight > 0 else s

    def to_json(self) -> dict[str, Any]:
        return {"sum": [float(x) for x in np.asarray(self.sum, np.float32)],
                "weight": float(self.weight), "count": int(self.count)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "UserState | None":
        if not d:
            return None
        return cls(tuple(np.asarray(d["sum"], np.float32).tolist()), float(d["weight"]), int(d["count"]))


def empty(dim: int) -> UserState:
    return UserState(tuple([0.0] * dim), 0.0, 0)


def _as_state(prev: UserState | dict | None, dim: int) -> UserState:
    if prev is None:
        return empty(dim)
    if isinstance(prev, dict):
        return UserState.from_json(prev) or empty(dim)
    return prev


def update_one(prev_state: UserState | dict | None, item_vec: Sequence[float] | np.ndarray,
               decay: float = 0.8) -> UserState:
    """New state after one event, from the previous state (None = new user) and the item's vector."""
    v = np.asarray(item_vec, dtype=np.float32)
    prev = _as_state(prev_state, v.shape[0])
    s = np.float32(decay) * np.asarray(prev.sum, np.float32) + v
    return UserState(tuple(s.astype(np.float32).tolist()), float(decay * prev.weight + 1.0), prev.count + 1)


def recompute(item_vecs: Sequence[Sequence[float]] | np.ndarray, decay: float = 0.8,
              window: int = 50) -> UserState:
    """State from the user's events (oldest first); only the last ``window`` events count."""
    vecs = np.asarray(item_vecs, dtype=np.float32)
    n_all = len(vecs)
    if vecs.ndim != 2:
        if n_all == 0:
            raise ValueError("recompute needs a (n, d) array; use empty(dim) for a user without events")
        raise ValueError("item_vecs must be 2-D (n_events, dim)")
    vecs = vecs[-window:]
    n = len(vecs)
    w = np.float32(decay) ** np.arange(n - 1, -1, -1, dtype=np.float32)
    s = (w[:, None] * vecs).sum(0) if n else np.zeros(vecs.shape[1], np.float32)
    return UserState(tuple(s.astype(np.float32).tolist()), float(w.sum()), n_all)
