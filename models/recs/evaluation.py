"""Evaluation protocol for next-item recommendation on any interaction log.

Protocol (documented in docs/recs.md):

1. Input: one row per event with ``user_id``, ``item_id``, ``ts`` (extra columns ignored).
2. Repeated (user, item) pairs are collapsed to the user's FIRST interaction with that item: the task
   is recommending items the user has not interacted with yet, so a target can never be in the history.
3. Each user's events are ordered by ``ts``; events with the same ``ts`` are ordered by a stable hash of
   (user_id, item_id) — deterministic, independent of file order and carrying no exploitable
   signal (ordering by item id would let a model learn "ids increase within a second").
4. Users with at least 3 distinct items: the last event is the TEST target, the second last the
   VALIDATION target, the rest is TRAIN. Users with fewer events stay entirely in TRAIN.
5. Validation ranks the validation item given the TRAIN history; test ranks the test item given
   TRAIN + validation item. Epochs / early stopping may look at validation only.
6. Full ranking: every catalogue item is scored except the items in the user's history (the
   target is never in the history, so it always stays rankable). Ties are broken deterministically
   by item index (stable sort by descending score).
7. Metrics per user from the 0-based rank r of the target: Hit@K = [r < K], NDCG@K = 1/log2(r+2) if
   r < K, MRR@K = 1/(r+1) if r < K, Recall@20 = Hit@20 (one target); averaged over evaluated users.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from models.timestamps import to_epoch_seconds

K_MAX = 50
HEADLINE = ("ndcg@10", "hit@10", "mrr@10", "recall@20")


def _tie_key(users: pd.Series, items: pd.Series) -> np.ndarray:
    """Deterministic pseudo-random tie-break key per (user, item)."""
    keys = (users.astype(str) + "\x1f" + items.astype(str)).to_numpy()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") >> 1 for k in keys),
        dtype=np.int64, count=len(keys),
    )


def normalize_log(df: pd.DataFrame) -> pd.DataFrame:
    """Validate columns, cast ids to str, dedupe (user,item) keeping the first, order per user."""
    missing = {"user_id", "item_id", "ts"} - set(df.columns)
    if missing:
        raise ValueError(f"interaction log is missing column(s) {sorted(missing)}; need user_id,item_id,ts")
    out = df[["user_id", "item_id", "ts"]].copy()
    if out.empty:
        raise ValueError("interaction log is empty")
    for column in ("user_id", "item_id", "ts"):
        empty = out[column].isna().to_numpy()
        if empty.any():  # which one, and where: the file's row (a frame read from a file keeps its row numbers)
            label = out.index[int(empty.argmax())]
            where = f" in row {int(label) + 2}" if isinstance(label, (int, np.integer)) else ""
            raise ValueError(f"interaction log has an empty {column}{where}: every row needs user_id, item_id and ts")
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    ts, _unit = to_epoch_seconds(out["ts"])  # only the order within a user matters here
    out["ts"] = ts.astype("float64")
    out["_tie"] = _tie_key(out["user_id"], out["item_id"])
    out = out.sort_values(["user_id", "ts", "_tie"], kind="stable")
    out = out.drop_duplicates(["user_id", "item_id"], keep="first")
    return out.drop(columns="_tie").reset_index(drop=True)


@dataclass
class Split:
    """Leave-one-out split with integer-encoded items.

    ``train_seqs[u]``: TRAIN item indices of user u in time order; ``valid[u]`` / ``test[u]``:
    target index or -1 for users not evaluated.
    """

    user_ids: list[str]
    item_ids: list[str]
    train_seqs: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray
    item_index: dict[str, int] = field(repr=False, default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def eval_users(self) -> np.ndarray:
        return np.flatnonzero(self.test >= 0)

    def history(self, stage: str) -> list[np.ndarray]:
        """Input history of every user for a stage: 'valid' -> TRAIN, 'test' -> TRAIN + valid item."""
        if stage == "valid":
            return self.train_seqs
        if stage != "test":
            raise ValueError(stage)
        return [np.append(s, v) if v >= 0 else s for s, v in zip(self.train_seqs, self.valid)]

    def targets(self, stage: str) -> np.ndarray:
        return self.valid if stage == "valid" else self.test

    def fit_sequences(self, stage: str) -> list[np.ndarray]:
        """Everything a model may learn from when it is evaluated on `stage` (never the target)."""
        return self.history(stage)

    def fit_frame(self, stage: str) -> pd.DataFrame:
        seqs = self.fit_sequences(stage)
        u = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        i = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        return pd.DataFrame({"user": u, "item": i})


def leave_one_out(df: pd.DataFrame, item_ids: Sequence[str] | None = None) -> Split:
    """Time-ordered leave-one-out split of an interaction log (see module docstring)."""
    log = normalize_log(df)
    if item_ids is None:
        item_ids = sorted(log["item_id"].unique())
    item_ids = list(item_ids)
    index = {it: i for i, it in enumerate(item_ids)}
    unknown = set(log["item_id"].unique()) - index.keys()
    if unknown:
        item_ids = item_ids + sorted(unknown)
        index = {it: i for i, it in enumerate(item_ids)}
    log["item"] = log["item_id"].map(index).astype(np.int64)
    users, train, valid, test = [], [], [], []
    for uid, grp in log.groupby("user_id", sort=True):
        seq = grp["item"].to_numpy()
        users.append(str(uid))
        if len(seq) >= 3:
            train.append(seq[:-2].copy())
            valid.append(int(seq[-2]))
            test.append(int(seq[-1]))
        else:
            train.append(seq.copy())
            valid.append(-1)
            test.append(-1)
    return Split(users, item_ids, train, np.asarray(valid, np.int64), np.asarray(test, np.int64), index)


# --------------------------------------------------------------------------------------------- metrics
def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, histories: Sequence[Iterable[int]]) -> np.ndarray:
    """0-based rank of each target among non-history items (stable descending order, ties by index).

    ``scores``: (n_users, n_items). History items are removed from the ranking; a target that is
    (wrongly) in the history is kept rankable.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    n = scores.shape[1]
    ranks = np.empty(len(targets), dtype=np.int64)
    for r, (t, h) in enumerate(zip(targets, histories)):
        row = scores[r]
        h = np.asarray(list(h) if not isinstance(h, np.ndarray) else h, dtype=np.int64)
        h = h[h != t]
        row[h] = -np.inf
        ts = row[t]
        if not np.isfinite(ts):  # NaN/-inf target: worst rank
            ranks[r] = n - 1 - len(h)
            continue
        greater = np.count_nonzero(row > ts)
        ties_before = np.count_nonzero(row[:t] == ts)
        ranks[r] = greater + ties_before
    return ranks


def metrics_from_ranks(ranks: np.ndarray, k_max: int = K_MAX) -> dict:
    """Headline metrics + NDCG@K curve (K=1..k_max) from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no evaluated users")
    gain = 1.0 / np.log2(ranks + 2.0)
    out = {
        "ndcg@10": float(np.mean(ndcg_at_10(ranks))),
        "hit@10": float(np.mean(ranks < 10)),
        "mrr@10": float(np.mean(np.where(ranks < 10, 1.0 / (ranks + 1.0), 0.0))),
        "recall@20": float(np.mean(ranks < 20)),
    }
    out["ndcg@k"] = [float(np.mean(np.where(ranks < k, gain, 0.0))) for k in range(1, k_max + 1)]
    out["users"] = int(ranks.size)
    return out


ScoreFn = Callable[[np.ndarray, list[np.ndarray]], np.ndarray]


def scorer_ranks(
    score: ScoreFn, split: Split, stage: str = "test", users: np.ndarray | None = None,
    batch: int = 512, progress: str | None = None,
) -> np.ndarray:
    """0-based rank of the stage target of each evaluated user, scored by ``score(user_idx, histories)``."""
    users = split.eval_users if users is None else np.asarray(users)
    hist = split.history(stage)
    targets = split.targets(stage)
    ranks = []
    it = range(0, len(users), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=progress, unit="batch", leave=False)
    for start in it:
        ub = users[start:start + batch]
        hb = [hist[u] for u in ub]
        s = np.asarray(score(ub, hb), dtype=np.float64)
        ranks.append(ranks_from_scores(s, targets[ub], hb))
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def evaluate_scorer(
    score: ScoreFn, split: Split, stage: str = "test", users: np.ndarray | None = None,
    batch: int = 512, progress: str | None = None,
) -> dict:
    """Metrics of ``score`` on the stage targets (see :func:`scorer_ranks`)."""
    return metrics_from_ranks(scorer_ranks(score, split, stage, users, batch, progress))


def ndcg_at_10(ranks: np.ndarray) -> np.ndarray:
    """Per-user NDCG@10 from 0-based ranks (one target per user)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-user ``a - b`` with a 95 % percentile CI from resampling users (paired)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired bootstrap needs two equal-length, non-empty arrays")
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": round(float(d.mean()), 6), "ci95": [round(float(lo), 6), round(float(hi), 6)],
            "n_boot": n_boot, "users": int(d.size)}


def headline(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 6) for k in HEADLINE}
