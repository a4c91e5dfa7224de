"""Second stage of serving: re-score the index's candidates with the full-rank model.

The FAISS index holds the rank-``dim`` model: an incrementally updated user vector against item vectors, which
is what a stream can keep per user. ``seqlinear``'s full model scores ``x_user · B`` (``x_user``: the decayed,
normalised vector of the user's last ``window`` items; ``B``: the ridge item-to-next-item matrix). Re-scoring
the top ``RERANK_CANDIDATES`` of the index with ``B`` gives (nearly) the full model's ranking at the cost of one
(history × candidates) gather per query. On ml-100k's validation items (the only place this was chosen):
NDCG@10 0.1134 for the user vector alone; re-ranking 50, 100 or 200 candidates 0.1201, 0.1205, 0.1215 (the
full model). 50 is the default: only the kept candidates are gathered, so the cost grows with it (in numpy,
about 30 µs per query at 50 candidates; the wider search and the history lookups add as much again).

Items outside the dense system (cold items) keep their index score, exactly as ``SeqLinearModel.score`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np

from models.recs.index import row_width

RERANK_CANDIDATES = 50
MATRIX_FILE = "rerank_matrix.npy"
COLUMNS_FILE = "rerank_items.npy"
MASK_CELLS = 1 << 22  # exclusions as a dense (queries x items) mask up to this size, else np.isin


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

    @cached_property
    def _weight_table(self) -> np.ndarray:
        """Row ``L``: the normalised ``decay ** lag`` weights of a history of length ``L`` (left-aligned)."""
        table = np.zeros((self.window + 1, max(self.window, 1)))
        for n in range(1, self.window + 1):
            w = self.decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
            table[n, :n] = w / w.sum()
        return table

    def rerank_batch(self, histories: Sequence[Sequence[int]], ids: np.ndarray, fallback: np.ndarray,
                     exclude: Sequence[Sequence[int]], k: int, candidates: int, chunk: int = 256,
                     exclude_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Re-score raw index answers, vectorised: ``ids`` / ``fallback`` (Q, C) from the index in its order
        (-1 = no item), ``exclude`` the item indices each row must skip. The first ``candidates`` items of each
        row that are not excluded are re-scored with ``x_user · B`` (items outside the dense system keep their
        index score). Returns (Q, k) item indices, best first with ties to the lower index (-1 where a row has
        fewer than k items), and their scores. ``exclude_mask``: ``exclude`` as :func:`exclusion_mask` gave it,
        when the caller has it already."""
        q_all, c = ids.shape
        width = min(c, max(candidates, k))  # the columns that can still be served after the cut
        k = min(k, c)
        out_ids = np.full((q_all, k), -1, np.int64)
        out_scores = np.full((q_all, k), -np.inf)
        n_items = len(self.col_of)
        table = self._weight_table
        for start in range(0, q_all, chunk):
            stop = min(q_all, start + chunk)
            ids_c = ids[start:stop]
            valid = ids_c >= 0
            safe = np.where(valid, ids_c, 0)
            if exclude_mask is not None:
                skip = ~valid | exclude_mask[np.arange(start, stop)[:, None], safe]
            else:
                skip = ~valid | _excluded(safe, exclude[start:stop], n_items)
            keep = ~skip & (np.cumsum(~skip, axis=1) <= candidates)
            # the kept columns first, in index order: only those are gathered from B
            sel = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            kept = np.take_along_axis(keep, sel, 1)
            cand = np.take_along_axis(safe, sel, 1)
            rows, w = self._history_rows(histories[start:stop], table)
            cols = self.col_of[cand]
            # a history with no item in the dense system scores every candidate 0: the row would go in catalogue
            # order; it keeps the index's ranking and scores instead (found by review)
            warm = kept & (cols >= 0) & w.any(axis=1)[:, None]
            # (q, window, width) from B, as flat offsets (np.take is cheaper than 2-d fancy indexing)
            offsets = rows[:, :, None] * self.matrix.shape[1] + np.where(warm, cols, 0)[:, None, :]
            gathered = self.matrix.reshape(-1).take(offsets) if self.matrix.size else np.zeros(offsets.shape)
            index_scores = np.take_along_axis(fallback[start:stop], sel, 1)
            scores = np.where(warm, np.einsum("qh,qhc->qc", w, gathered), index_scores)
            scores[~kept] = -np.inf
            order = np.lexsort((cand, -scores))[:, :k]
            top_scores = np.take_along_axis(scores, order, 1)
            top_ids = np.take_along_axis(cand, order, 1)
            top_ids[np.isneginf(top_scores)] = -1
            out_ids[start:stop], out_scores[start:stop] = top_ids, top_scores
        return out_ids, out_scores

    def _history_rows(self, histories: Sequence[Sequence[int]], table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of `matrix`, weights), each (q, h), padded with weight 0, for histories of item indices (oldest
        first): ``decay ** lag`` over the last ``window`` items, normalised over all of them, then the items outside
        the dense system dropped with the rest kept in order (``models.recs.seqlinear.history_matrix``)."""
        cut = [h[-self.window:] if len(h) > self.window else h for h in histories]
        lengths = np.fromiter(map(len, cut), np.int64, len(cut))
        q, width = len(cut), max(1, int(lengths.max(initial=0)))
        pos = np.zeros((q, width), np.int64)
        inside = np.arange(width)[None, :] < lengths[:, None]
        pos[inside] = np.fromiter(chain.from_iterable(cut), np.int64, int(lengths.sum()))
        w = table[lengths, :width]
        rows = self.col_of[pos]
        dropped = inside & (rows < 0)
        if dropped.any():  # items outside the dense system: out, the rest moved up in their order
            gone = dropped | ~inside
            sel = np.argsort(gone, axis=1, kind="stable")
            rows, w = np.take_along_axis(rows, sel, 1), np.take_along_axis(w, sel, 1)
            w = np.where(np.take_along_axis(gone, sel, 1), 0.0, w)
        rows = np.where(rows < 0, 0, rows)
        return rows, w


def exclusion_mask(exclude: Sequence[Sequence[int]], n_items: int) -> np.ndarray | None:
    """(q, n_items) bool: item ``i`` is in ``exclude[r]`` (rows may repeat an item); None above ``MASK_CELLS``."""
    q = len(exclude)
    if q * n_items > MASK_CELLS:
        return None
    sizes = np.fromiter(map(len, exclude), np.int64, q)
    mask = np.zeros((q, n_items), bool)
    mask[np.repeat(np.arange(q), sizes), np.fromiter(chain.from_iterable(exclude), np.int64, int(sizes.sum()))] = True
    return mask


def _excluded(ids: np.ndarray, exclude: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """(q, C) bool: ``ids[r, j]`` is in ``exclude[r]``."""
    q = len(ids)
    mask = exclusion_mask(exclude, n_items)  # dense: no sorting
    if mask is not None:
        return mask[np.arange(q)[:, None], ids]
    sizes = np.fromiter(map(len, exclude), np.int64, q)
    flat = np.fromiter(chain.from_iterable(exclude), np.int64, int(sizes.sum()))
    keys = np.repeat(np.arange(q), sizes) * n_items + flat
    return np.isin(np.arange(q)[:, None] * n_items + ids, keys)


def search_and_rerank(index, full: FullRankScorer, vectors: np.ndarray, k: int, candidates: int,
                      exclude: Sequence[Sequence[int]], histories: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The served second stage from the user vectors: a search of ``index`` (an ``ItemIndex``) wide enough to
    leave ``candidates`` items after each row's exclusions (each row's own width: ``ItemIndex.search_rows``),
    then ``full.rerank_batch``. The worker (``Recommender``) and ``evaluate recs`` both call this, so the
    evaluation measures what is served."""
    n = len(index)
    mask = exclusion_mask(exclude, n)  # the distinct excluded items of each row (a row may repeat one)
    distinct = mask.sum(axis=1).tolist() if mask is not None else [len(set(ex)) for ex in exclude]
    widths = np.minimum(np.maximum([row_width(candidates + d, n) for d in distinct], 1), max(n, 1))
    scores, ids = index.search_rows(vectors, widths.tolist())
    groups = np.unique(widths).tolist()
    if len(groups) <= 1:
        return full.rerank_batch(histories, ids, scores.astype(np.float64), exclude, k, candidates,
                                 exclude_mask=mask)
    # each width's rows re-ranked on their own columns: padded to the widest, one heavy user's row (thousands of
    # exclusions) made every row's arrays that wide (found by review). The padding is -1 (no item), which the
    # re-ranking skips, so a row's answer is the same either way
    cols = min(k, ids.shape[1])
    out_ids, out_scores = np.full((len(ids), cols), -1, np.int64), np.full((len(ids), cols), -np.inf)
    for width in groups:
        rows = np.flatnonzero(widths == width)
        part_ids, part_scores = full.rerank_batch(
            [histories[r] for r in rows], ids[rows, :width], scores[rows, :width].astype(np.float64),
            [exclude[r] for r in rows], k, candidates, exclude_mask=None if mask is None else mask[rows])
        out_ids[rows, :part_ids.shape[1]], out_scores[rows, :part_scores.shape[1]] = part_ids, part_scores
    return out_ids, out_scores
