"""Baselines on the same leave-one-out split: popularity, item-KNN (cosine), ALS (implicit), Markov.

Every baseline is fitted with :meth:`Split.fit_sequences(stage)` — TRAIN (+ the validation item when
the stage is 'test'), never the stage's target — and exposes ``score(users, histories) -> (b, n_items)``.
Markov and item-KNN back off to popularity (weight 1e-6) so that their ties are not broken by item id.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from models.recs.evaluation import Split

BACKOFF = 1e-6


def _matrix(seqs: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    cols = np.concatenate([np.asarray(s, np.int64) for s in seqs]) if len(seqs) else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(seqs), n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _popularity(seqs: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    counts = np.bincount(np.concatenate(seqs).astype(np.int64), minlength=n_items) if len(seqs) else np.zeros(n_items)
    return counts.astype(np.float64)


class Popularity:
    name = "pop"

    def fit(self, seqs: Sequence[np.ndarray], n_items: int) -> "Popularity":
        self.counts = _popularity(seqs, n_items)
        return self

    def score(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class ItemKNN:
    """Item-item cosine similarity on the binary user-item matrix, top-K neighbours per item."""

    name = "item_knn"

    # a chunk of rows costs about 24 B per (row, item): the dense block, its normalisation and negation, and
    # argpartition's int64 output; chunks are sized to this so a large catalogue does not take tens of GB
    CHUNK_BYTES = 256 * 1024 * 1024

    def __init__(self, k: int = 50, chunk: int = 2048) -> None:
        self.k = k
        self.chunk = chunk

    def fit(self, seqs: Sequence[np.ndarray], n_items: int) -> "ItemKNN":
        x = _matrix(seqs, n_items).tocsc().astype(np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        norms[norms == 0] = 1.0
        xt = x.T.tocsr()
        rows, cols, vals = [], [], []
        chunk = max(1, min(self.chunk, self.CHUNK_BYTES // (24 * max(n_items, 1))))  # rows are independent
        for start in range(0, n_items, chunk):
            stop = min(start + chunk, n_items)
            block = (xt[start:stop] @ x).toarray()  # co-occurrence counts (chunk, n_items)
            block /= norms[start:stop, None] * norms[None, :]
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            k = min(self.k, n_items - 1)
            if k <= 0:
                continue
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            v = np.take_along_axis(block, top, axis=1)
            keep = v > 0
            rows.append(np.repeat(np.arange(start, stop), k)[keep.ravel()])
            cols.append(top.ravel()[keep.ravel()])
            vals.append(v.ravel()[keep.ravel()])
        cat = (lambda a, dt: np.concatenate(a).astype(dt) if a else np.zeros(0, dt))
        self.sim = sp.csr_matrix((cat(vals, np.float32), (cat(rows, np.int64), cat(cols, np.int64))),
                                 shape=(n_items, n_items))
        self.pop = _popularity(seqs, n_items)
        self.pop /= max(self.pop.max(), 1.0)
        self.n_items = n_items
        return self

    def score(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        h = _matrix(histories, self.n_items)
        return np.asarray((h @ self.sim).todense(), dtype=np.float64) + BACKOFF * self.pop


class ALS:
    """Implicit-feedback ALS (Hu, Koren & Volinsky) from the `implicit` package, CPU, 1-2 threads."""

    name = "als"

    def __init__(self, factors: int = 64, iterations: int = 15, regularization: float = 0.01,
                 seed: int = 0, threads: int = 2) -> None:
        self.factors, self.iterations, self.regularization = factors, iterations, regularization
        self.seed, self.threads = seed, threads

    def fit(self, seqs: Sequence[np.ndarray], n_items: int) -> "ALS":
        from implicit.cpu.als import AlternatingLeastSquares  # CPU class: never picks a GPU silently
        from threadpoolctl import threadpool_limits

        # implicit runs its own threads, and warns (and slows) with a BLAS pool of more than one: the environment
        # variable set here came after numpy had loaded OpenBLAS, so every evaluation printed the warning (review)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, iterations=self.iterations,
                random_state=self.seed, num_threads=self.threads, calculate_training_loss=False,
            )
            model.fit(_matrix(seqs, n_items), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def score(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        return (self.user_factors[np.asarray(users)] @ self.item_factors.T).astype(np.float64)


class Markov:
    """First-order Markov chain: P(next | last item) from consecutive pairs, popularity back-off."""

    name = "markov"

    def fit(self, seqs: Sequence[np.ndarray], n_items: int) -> "Markov":
        src = np.concatenate([s[:-1] for s in seqs if len(s) > 1] or [np.zeros(0, np.int64)])
        dst = np.concatenate([s[1:] for s in seqs if len(s) > 1] or [np.zeros(0, np.int64)])
        t = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(n_items, n_items))
        t.sum_duplicates()
        rows = np.asarray(t.sum(axis=1)).ravel()
        rows[rows == 0] = 1.0
        self.trans = sp.diags(1.0 / rows) @ t
        self.trans = self.trans.tocsr()
        self.pop = _popularity(seqs, n_items)
        self.pop /= max(self.pop.max(), 1.0)
        self.n_items = n_items
        return self

    def score(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        out = np.tile(BACKOFF * self.pop, (len(histories), 1))
        for r, h in enumerate(histories):
            if len(h):
                row = self.trans.getrow(int(h[-1]))
                out[r, row.indices] += row.data
        return out


def all_baselines(seed: int = 0, threads: int = 2) -> list:
    return [Popularity(), ItemKNN(k=50), ALS(factors=64, seed=seed, threads=threads), Markov()]


def fit_baseline(model, split: Split, stage: str):
    return model.fit(split.fit_sequences(stage), split.n_items)
