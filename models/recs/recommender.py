"""Artifacts (write/read a registry version of the recs model) and the serving-side `Recommender`.

A version directory under ``<registry>/recs`` holds::

    item_ids.json        catalogue order (row i of every table is item_ids[i])
    item_emb.npy         (n, d) float32 — scored by the index (transformer output space)
    query_emb.npy        (n, d) float32 — streaming item vectors folded into the user state
    popularity.npy       (n,) float64  — event counts, for `popular_items`
    config.json          RecsConfig + learned stream decay
    model.pt             torch state dict (arch=sasrec only)
    index/               the FAISS index (items.faiss, item_ids.json, index.json)
    segments.npy         (k, d) float32 — k-means centroids of user vectors (models/recs/segments.py)
    rerank_matrix.npy    (m, m) float32 — seqlinear's full-rank item-to-next-item matrix (models/recs/rerank.py)
    rerank_items.npy     (m,) int — the item index of each of its rows/columns
    metrics.json, meta.json
"""
from __future__ import annotations

import json
import os
from itertools import chain
from pathlib import Path
from typing import AbstractSet, Sequence

import numpy as np

from models.recs import user_vector as uv
from models.recs.index import HotSwapIndex, ItemIndex, vectors_fingerprint
from models.recs.rerank import RERANK_CANDIDATES, FullRankScorer, search_and_rerank


def write_artifacts(directory: Path, model, item_ids: Sequence[str], popularity: np.ndarray,
                    metrics: dict | None = None, index_kind: str = "auto",
                    segments: np.ndarray | None = None) -> ItemIndex:
    directory = Path(directory)
    if getattr(model, "net", None) is not None:
        import torch
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "item_ids.json").write_text(json.dumps(list(item_ids)))
    np.save(directory / "item_emb.npy", model.item_emb.astype(np.float32))
    np.save(directory / "query_emb.npy", model.query_emb.astype(np.float32))
    np.save(directory / "popularity.npy", np.asarray(popularity, np.float64))
    if segments is not None:
        np.save(directory / "segments.npy", np.asarray(segments, np.float32))
    cfg = model.cfg.to_dict()
    cfg["stream_decay"] = float(model.decay)
    cfg["n_items"] = len(item_ids)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    if getattr(model, "net", None) is not None:
        torch.save(model.state_dict(), directory / "model.pt")
    full = FullRankScorer.from_model(model)
    if full is not None:
        full.save(directory)
    index = ItemIndex.build(list(item_ids), model.item_emb, kind=index_kind, version=directory.name)
    index.save(directory / "index")
    (directory / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, sort_keys=True))
    return index


class Recommender:
    """What the stream queries: item vectors, the user-vector update, and top-k via the FAISS index."""

    def __init__(self, directory: str | os.PathLike[str], use_gpu: bool | None = None,
                 rerank_candidates: int = RERANK_CANDIDATES) -> None:
        d = Path(directory)
        if not (d / "item_ids.json").is_file():
            raise FileNotFoundError(f"{d} is not a recs model version (no item_ids.json)")
        self.path = d
        self.version = d.name
        self.item_ids: list[str] = json.loads((d / "item_ids.json").read_text())
        self._pos = {it: i for i, it in enumerate(self.item_ids)}
        self.item_emb = np.load(d / "item_emb.npy")
        self.query_emb = np.load(d / "query_emb.npy")
        self.popularity = np.load(d / "popularity.npy")
        self.config = json.loads((d / "config.json").read_text())
        self.decay = float(self.config.get("stream_decay", self.config.get("stream_decay_init", 0.8)))
        self.window = int(self.config.get("stream_window", 50))
        self.dim = int(self.item_emb.shape[1])
        index = ItemIndex.load(d / "index", use_gpu=use_gpu)
        index.version = self.version  # the index inside a version directory is that version's (it was saved
        self.index = HotSwapIndex(index)  # under the registry's temporary name, before the rename)
        self._popular = [self.item_ids[i] for i in np.argsort(-self.popularity, kind="stable")]
        self.segments: np.ndarray | None = np.load(d / "segments.npy") if (d / "segments.npy").is_file() else None
        # the full-rank second stage (seqlinear versions); 0 candidates: the user vector's ranking alone
        self.full = FullRankScorer.load(d, len(self.item_ids), self.decay, self.window) \
            if rerank_candidates > 0 else None
        self.rerank_candidates = int(rerank_candidates) if self.full is not None else 0
        self._net = None

    @classmethod
    def from_registry(cls, root: str | os.PathLike[str], use_gpu: bool | None = None) -> "Recommender":
        from models.registry import Registry

        return cls(Registry(root).current_path(), use_gpu=use_gpu)

    # ---------------------------------------------------------------- item / user vectors
    def item_vector(self, item_id: str) -> np.ndarray | None:
        """The item's streaming (query-side) vector, or None for an unknown item."""
        i = self._pos.get(str(item_id))
        return None if i is None else self.query_emb[i]

    def update_user(self, prev_state: uv.UserState | dict | None, item_id: str) -> uv.UserState | None:
        """Fold one event into a user state; unknown items leave the state unchanged."""
        v = self.item_vector(item_id)
        if v is None:
            return uv.UserState.from_json(prev_state) if isinstance(prev_state, dict) else prev_state
        return uv.update_one(prev_state, v, self.decay)

    def recompute_user(self, item_ids: Sequence[str]) -> uv.UserState | None:
        known = self.positions([str(i) for i in item_ids])
        return uv.recompute(self.query_emb[known], self.decay, self.window) if known else None

    # ---------------------------------------------------------------- recommendations
    def recommend_many(self, user_states: Sequence[uv.UserState | dict | np.ndarray | None], k: int = 10,
                       exclude: Sequence[AbstractSet[str] | None] | None = None,
                       histories: Sequence[Sequence[str]] | None = None, *, exclude_history: bool = False,
                       decimals: int | None = None) -> list[list[tuple[str, float]]]:
        """Top-k per user via the FAISS index; users without a vector get `popular_items`. With ``histories``
        (each user's item ids, oldest first) and a full-rank model in the version, the index's top
        ``rerank_candidates`` are re-scored by it (models/recs/rerank.py) and the scores are the full model's.
        ``exclude_history``: skip each user's history items too (the stream's case: cheaper than passing them
        again in ``exclude``). ``decimals``: scores rounded so, in one numpy call."""
        if exclude_history and histories is None:
            raise ValueError("exclude_history needs histories")
        vecs, rows = [], []
        for r, st in enumerate(user_states):
            if isinstance(st, dict):
                st = uv.UserState.from_json(st)
            if isinstance(st, uv.UserState):
                st = st.vector() if st.count > 0 else None
            if st is not None:
                st = np.asarray(st, np.float32)
                if st.any():  # all zeros (only items without a vector: the long tail past max_items) is no vector:
                    vecs.append(st)  # its search would rank every item at 0, in catalogue order
                    rows.append(r)
        out: list[list[tuple[str, float]]] = [[] for _ in user_states]
        # k at or above the candidates: the top k are re-scored (it switched the re-ranking off, so a worker with
        # TIDEWATER_REC_TOP_K >= the candidates served the vector's ranking, not the one `evaluate recs` measures)
        rerank = histories is not None and self.rerank_candidates > 0
        if vecs:
            ex = [exclude[r] for r in rows] if exclude is not None else None
            if rerank:
                res = self._rerank_many(np.stack(vecs), k, ex, [histories[r] for r in rows], exclude_history,
                                        decimals)
            else:
                if exclude_history:
                    ex = [set(histories[r]).union(e or ()) for r, e in zip(rows, ex or [None] * len(rows))]
                res = _rounded(self.index.search_many(np.stack(vecs), k, ex), decimals)
            for r, items in zip(rows, res):
                out[r] = items
        have = set(rows)
        for r in range(len(user_states)):
            if r not in have:
                ex = exclude[r] if exclude is not None else None
                if exclude_history:
                    ex = set(histories[r]).union(ex or ())
                out[r] = [(it, 0.0) for it in self.popular_items(k, ex)]
        return out

    def _rerank_many(self, vecs: np.ndarray, k: int, exclude: Sequence[AbstractSet[str] | None] | None,
                     histories: Sequence[Sequence[str]], exclude_history: bool = False,
                     decimals: int | None = None) -> list[list[tuple[str, float]]]:
        """The index's top candidates (enough to leave ``rerank_candidates`` after the exclusions), re-scored
        by the full-rank model in one vectorised pass."""
        history_pos = self.positions_many(histories)
        excluded: list = [[] for _ in history_pos]
        if exclude_history:  # repeats are fine: the search is widened by the number of distinct excluded items
            excluded = list(history_pos)  # a copy: a user's exclusions below must not replace their history
        if exclude is not None:
            for r, e in enumerate(exclude):
                if e:
                    excluded[r] = set(excluded[r]).union(self.positions(e)) if exclude_history \
                        else self.positions(e)
        top, top_scores = search_and_rerank(self.index.current, self.full, vecs, k,  # one index version
                                            max(self.rerank_candidates, k), excluded, history_pos)
        if decimals is not None:
            top_scores = np.round(top_scores, decimals)
        names = self.item_ids
        return [[(names[i], s) for i, s in zip(row, srow) if i >= 0]
                for row, srow in zip(top.tolist(), top_scores.tolist())]

    def positions(self, item_ids: Sequence[str]) -> list[int]:
        """Catalogue indices of the known items among ``item_ids`` (unknown ones are skipped, as in the user
        vector)."""
        return [p for p in map(self._pos.get, item_ids) if p is not None]  # one dict lookup per item

    def positions_many(self, histories: Sequence[Sequence[str]]) -> list[list[int]]:
        """``[positions(h) for h in histories]``: one lookup pass over all of them, split by slicing (the
        per-row filter only when an item is unknown)."""
        found = list(map(self._pos.get, chain.from_iterable(histories)))
        if None in found:
            return [self.positions(h) for h in histories]
        out, at = [], 0
        for n in map(len, histories):
            out.append(found[at:at + n])
            at += n
        return out

    def popular_items(self, k: int = 10, exclude: AbstractSet[str] | None = None) -> list[str]:
        out = []
        for it in self._popular:
            if exclude and it in exclude:
                continue
            out.append(it)
            if len(out) == k:
                break
        return out

    def segment_of(self, state: uv.UserState | np.ndarray) -> int | None:
        """The user's k-means segment (None when the version has no segments)."""
        if self.segments is None:
            return None
        vec = state.vector() if isinstance(state, uv.UserState) else state
        v = np.asarray(vec, np.float32)
        if v.ndim == 1:  # the stream's case, once per recommendation: the unit centroids' argmax of cosines is
            return int((self.segments @ v).argmax())  # that of dot products (|v| > 0 scales them all alike)
        from models.recs.segments import assign_segments

        return int(assign_segments(self.segments, v)[0])

    def swap_index(self, directory: str | os.PathLike[str]) -> str:
        """Hot-swap in another saved index (e.g. from `tidewater index build`); returns its version. An index of
        other vectors (another dimension) or another catalogue is refused: its answers would be other items' ids
        or a FAISS error at query time, and only its metadata's model version said otherwise."""
        def matches(new: ItemIndex) -> None:
            if new.dim != self.dim or new.item_ids != self.item_ids:
                raise ValueError(f"index {directory} does not match recs model {self.version}: dimension {new.dim} "
                                 f"(model {self.dim}), {len(new.item_ids)} items (model {len(self.item_ids)}"
                                 f"{', same count but other ids' if len(new.item_ids) == len(self.item_ids) else ''})")
            # the same catalogue is not the same vectors: every retrain has it (an index of another model's
            # vectors was served; found by review). Indexes saved before the fingerprint are taken on trust.
            if new.vectors_sha256 is not None and new.vectors_sha256 != vectors_fingerprint(self.item_emb):
                raise ValueError(f"index {directory} was built from other item vectors than recs model "
                                 f"{self.version}'s (another model over the same catalogue)")

        return self.index.load_and_swap(directory, accept=matches).version


def _rounded(ranked: list[list[tuple[str, float]]], decimals: int | None) -> list[list[tuple[str, float]]]:
    """Scores rounded to ``decimals`` in one numpy call (``round()`` per score costs more than the search)."""
    if decimals is None:
        return ranked
    it = iter(np.round(np.array([score for row in ranked for _, score in row], np.float64), decimals).tolist())
    return [[(item, next(it)) for item, _ in row] for row in ranked]
