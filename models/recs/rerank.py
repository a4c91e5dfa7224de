"""Second stage of serving: re-score the index's candidates with the full-rank model.

The FAISS index holds the rank-``dim`` model: an incrementally updated user vector against item vectors, which
is what a stream can keep per user. ``seqlinear``'s full model scores ``x_user · B`` (``x_user``: the decayed,
normalised vector of the user's last ``window`` items; ``B``: the ridge item-to-next-item matrix). Re-scoring
the top ``RERANK_CANDIDATES`` of the index with ``B`` gives (nearly) the full model's ranking at the cost of one
(history × candidates) gather per query. On ml-100k's validation items (the only place this was chosen):
NDCG@10 0.1134 for the user vector alone; re-ranking 50, 100 or 200 candidates 0.1201, 0.1205, 0.1215 (the
full model). 50 is the default: in numpy the re-ranking costs about 100 µs per query at 50 candidates, and
more above.

Items outside the dense system (cold items) keep their index score, exactly as ``SeqLinearModel.score`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

RERANK_CANDIDATES = 50
MATRIX_FILE = "rerank_matrix.npy"
COLUMNS_FILE = "rerank_items.npy"


@dataclass(frozen=True)
class FullRankScorer:
    matrix: np.ndarray  # (m, m) float32: B, rows = history item, columns = next item
    col_of: np.ndarray  # (n_items,) int64: the item's row/column in `matrix`, -1 outside the dense system
    decay: float
    window: int

    @classmethod
    def from_model(cls, model) -> "FullRankScorer | None":
        """The full model of a fitted ``SeqLinearModel`` (None for models without one)."""
        if getattr(model, "B", None) is None:
            return None
        return cls(np.asarray(model.B, np.float32), np.asarray(model.col_of, np.int64), float(model.decay),
                   int(model.cfg.window))

    def save(self, directory: Path) -> None:
        cols = np.flatnonzero(self.col_of >= 0)
        np.save(Path(directory) / MATRIX_FILE, self.matrix)
        np.save(Path(directory) / COLUMNS_FILE, cols[np.argsort(self.col_of[cols])])

    @classmethod
    def load(cls, directory: Path, n_items: int, decay: float, window: int) -> "FullRankScorer | None":
        d = Path(directory)
        if not (d / MATRIX_FILE).is_file():
            return None
        # mapped, so workers of one host share the page cache; a plain ndarray view (np.memmap's indexing is slow)
        matrix = np.asarray(np.load(d / MATRIX_FILE, mmap_mode="r"))
        cols = np.load(d / COLUMNS_FILE)
        col_of = np.full(n_items, -1, np.int64)
        col_of[cols] = np.arange(len(cols))
        return cls(matrix, col_of, float(decay), int(window))

    def history_weights(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(rows of `matrix`, weights) of a history of item indices, oldest first: ``decay ** lag`` over the last
        ``window`` items, normalised over all of them, then items outside the dense system dropped
        (``models.recs.seqlinear.history_matrix``)."""
        h = np.asarray(history, np.int64)[-self.window:]
        if len(h) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        w = self.decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float64)
        w /= w.sum()
        rows = self.col_of[h]
        keep = rows >= 0
        return rows[keep], w[keep]

    def rerank_batch(self, histories: Sequence[Sequence[int]], ids: np.ndarray, fallback: np.ndarray,
                     exclude: Sequence[Sequence[int]], k: int, candidates: int,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Re-score raw index answers, vectorised: ``ids`` / ``fallback`` (Q, C) from the index in its order
        (-1 = no item), ``exclude`` the item indices each row must skip. The first ``candidates`` items of each
        row that are not excluded are re-scored with ``x_user · B`` (items outside the dense system keep their
        index score). Returns (Q, k) item indices, best first with ties to the lower index (-1 where a row has
        fewer than k items), and their scores."""
        q_all, c = ids.shape
        k = min(k, c)
        out_ids = np.full((q_all, k), -1, np.int64)
        out_scores = np.full((q_all, k), -np.inf)
        n_items = len(self.col_of)
        for start in range(0, q_all, chunk):
            sl = slice(start, min(q_all, start + chunk))
            ids_c, q = ids[sl], min(q_all, start + chunk) - start
            valid = ids_c >= 0
            safe = np.where(valid, ids_c, 0)
            ex = [np.asarray(e, np.int64) for e in exclude[sl]]
            ex_keys = np.concatenate([r * n_items + e for r, e in enumerate(ex)]) if ex else np.zeros(0, np.int64)
            skip = ~valid | np.isin(np.arange(q)[:, None] * n_items + safe, ex_keys)
            skip |= np.cumsum(~skip, axis=1) > candidates
            weights = [self.history_weights(h) for h in histories[sl]]
            width = max((len(rows) for rows, _ in weights), default=0)
            rows_pad = np.zeros((q, max(width, 1)), np.int64)
            w_pad = np.zeros((q, max(width, 1)))
            for r, (rows, w) in enumerate(weights):
                rows_pad[r, :len(rows)], w_pad[r, :len(w)] = rows, w
            cols = self.col_of[safe]
            warm = valid & (cols >= 0)
            gathered = self.matrix[rows_pad[:, :, None], np.where(warm, cols, 0)[:, None, :]]  # (q, width, C)
            scores = np.where(warm, np.einsum("qh,qhc->qc", w_pad, gathered), fallback[sl])
            scores[skip] = -np.inf
            order = np.lexsort((safe, -scores))[:, :k]
            top_scores = np.take_along_axis(scores, order, 1)
            top_ids = np.take_along_axis(safe, order, 1)
            top_ids[np.isneginf(top_scores)] = -1
            out_ids[sl], out_scores[sl] = top_ids, top_scores
        return out_ids, out_scores


def search_and_rerank(index, full: FullRankScorer, vectors: np.ndarray, k: int, candidates: int,
                      exclude: Sequence[Sequence[int]], histories: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The served second stage from the user vectors: one search of ``index`` (an ``ItemIndex``) wide enough to
    leave ``candidates`` items after each row's exclusions, then ``full.rerank_batch``. The worker
    (``Recommender``) and ``evaluate recs`` both call this, so the evaluation measures what is served."""
    width = min(len(full.col_of), candidates + max(map(len, exclude), default=0))
    scores, ids = index.search_ids(vectors, width)
    return full.rerank_batch(histories, ids.astype(np.int64), scores.astype(np.float64), exclude, k, candidates)
