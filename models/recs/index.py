"""FAISS item index: exact (IndexFlatIP) or approximate (IVF-Flat, inner product) behind one interface.

* ``ItemIndex.build(item_ids, vectors, kind="auto")`` picks exact search up to ``EXACT_MAX`` items and an
  approximate index above: ``ivfpq`` on CPU (IVF with 4-bit PQ fast-scan codes, the top ``8*k`` candidates
  re-ranked with exact inner products) or ``ivf`` (IVF-Flat) on GPU, with ``nlist ~ 2*sqrt(n)`` (k-means, 10 iterations on <= 40*nlist samples) and ``nprobe`` calibrated at build time: the smallest nprobe in
  1, 2, 3, 4, 6, 8, 12, ... whose recall@10 against exact search on sample queries (catalogue vectors plus noise) reaches
  ``target_recall`` (0.985 by default; the goal is 0.98).
* Runs on GPU (``faiss.StandardGpuResources``) when faiss sees a GPU, else CPU; ``save``/``load`` always
  store the CPU index.
* ``search_many(queries, k, exclude)`` removes consumed items by oversampling (k + the row's exclusions,
  capped at the catalogue) and filtering, so every row of a flat index gets k results when the catalogue has k
  unconsumed items (an IVF index can return fewer: the lists it probes may hold fewer than the width).
* Every row is searched with a width of its own (``search_rows``): an approximate index's answer depends on
  the width (``ivfpq`` refines ``8 * width`` candidates), so a row's answer must not depend on which other
  rows share the call; otherwise a replay, batched differently, could recommend differently.
* ``HotSwapIndex`` holds the current index behind one reference: a new version is built/loaded fully
  off to the side and then swapped in with a single assignment under a lock, so concurrent queries
  see the old or the new index, never a half-built one.
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import AbstractSet, Callable, Sequence

import numpy as np

EXACT_MAX = 50_000
INDEX_FILE = "items.faiss"
IDS_FILE = "item_ids.json"
META_FILE = "index.json"
APPROX_KINDS = ("ivf", "ivfpq")
REFINE_K_FACTOR = 8
FIRST_PASS_MARGIN = 16  # search_many: first pass asks for k + this many, enough unless more excluded items rank there
WIDTH_STEP = 32  # per-row search widths are rounded up to a multiple of this, so that rows can share a search
GPU_MAX_K = 2048  # faiss-gpu's largest k per search (its k-selection kernels); wider rows are searched on the CPU copy
_DIRECT_MAP_LOCK = threading.Lock()


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    try:
        faiss = _faiss()
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - depends on the build (or no faiss at all)
        return False


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k ids with FAISS flat search (chunked)."""
    faiss = _faiss()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(np.ascontiguousarray(base, dtype=np.float32))
    _, ids = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids


def row_width(need: int, n_items: int) -> int:
    """The search width for a row that needs ``need`` results: rounded up to a multiple of ``WIDTH_STEP``,
    capped at the catalogue. A function of the row alone (see ``ItemIndex.search_rows``)."""
    return max(1, min(n_items, -(-max(1, need) // WIDTH_STEP) * WIDTH_STEP))


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    hits = [len(set(a[:k]) & set(e[:k]) - {-1}) / max(1, len(set(e[:k]) - {-1})) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 1.0


class ItemIndex:
    def __init__(self, item_ids: Sequence[str], index, kind: str, version: str, dim: int,
                 nprobe: int | None = None, use_gpu: bool | None = None, vectors_sha256: str | None = None) -> None:
        self.item_ids = list(item_ids)
        self.kind = kind
        self.version = version
        self.dim = dim
        self.nprobe = nprobe
        self._pos = {it: i for i, it in enumerate(self.item_ids)}
        self.vectors_sha256 = vectors_sha256  # of the item vectors it was built from (None: an older index)
        self._cpu_index = index
        self.on_gpu = False
        self._index = index
        if use_gpu is None:
            use_gpu = gpu_available()
        if use_gpu:
            faiss = _faiss()
            self._res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.on_gpu = True
        self._set_nprobe(nprobe)

    def _set_nprobe(self, nprobe: int | None) -> None:
        if nprobe is None or self.kind not in APPROX_KINDS:
            return
        self.nprobe = int(nprobe)
        _faiss().extract_index_ivf(self._cpu_index).nprobe = self.nprobe  # also the GPU's fallback (search_rows)
        if self.on_gpu:
            _faiss().GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)

    @property
    def nlist(self) -> int | None:
        return int(_faiss().extract_index_ivf(self._cpu_index).nlist) if self.kind in APPROX_KINDS else None

    def __len__(self) -> int:
        return len(self.item_ids)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, item_ids: Sequence[str], vectors: np.ndarray, kind: str = "auto",
              version: str | None = None, target_recall: float = 0.985, nlist: int | None = None,
              seed: int = 0, use_gpu: bool | None = None,
              calibration_queries: np.ndarray | None = None) -> "ItemIndex":
        """An index of ``vectors``, which records their fingerprint (``vectors_fingerprint``): a recommender
        refuses an index of other vectors over the same catalogue (another model's, say)."""
        faiss = _faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(item_ids):
            raise ValueError(f"vectors must be (n_items, dim); got {x.shape} for {len(item_ids)} ids")
        fingerprint = vectors_fingerprint(x)
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item ids must be unique")
        n, d = x.shape
        if use_gpu is None:
            use_gpu = gpu_available()
        if kind == "auto":  # fast-scan PQ has no GPU implementation: plain IVF there
            kind = "flat" if n <= EXACT_MAX else ("ivf" if use_gpu or d % 2 else "ivfpq")
        version = version or uuid.uuid4().hex[:12]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
            index.add(x)
            return cls(item_ids, index, "flat", version, d, use_gpu=use_gpu, vectors_sha256=fingerprint)
        if kind not in APPROX_KINDS:
            raise ValueError(f"unknown index kind {kind!r} (flat, ivf, ivfpq, auto)")
        if kind == "ivfpq" and d % 2:
            raise ValueError("ivfpq needs an even dimension")
        nlist = nlist or max(1, min(int(2 * np.sqrt(n)), n // 39))
        if kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:  # IVF + 4-bit PQ fast-scan codes (d/2 sub-quantizers), re-ranked exactly by a flat refine
            index = faiss.index_factory(d, f"IVF{nlist},PQ{d // 2}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
            index.k_factor = REFINE_K_FACTOR
        ivf = faiss.extract_index_ivf(index)
        rng = np.random.default_rng(seed)
        train = x if n <= 40 * nlist else x[np.sort(rng.choice(n, 40 * nlist, replace=False))]
        ivf.cp.seed = seed
        ivf.cp.niter = 10
        ivf.cp.spherical = True  # unit-norm centroids: inner-product assignment is then well posed
        # faiss prints a warning per k-means below 39 points per centroid (32 lines for the PQ of a small catalogue
        # in `evaluate recs`; review): the threshold only gates that message, the clustering is the same
        ivf.cp.min_points_per_centroid = 1
        codes = faiss.downcast_index(ivf)  # the IVF-PQ's own class, with its product quantizer
        if hasattr(codes, "pq"):
            codes.pq.cp.min_points_per_centroid = 1
        index.train(train)
        index.add(x)
        out = cls(item_ids, index, kind, version, d, nprobe=1, use_gpu=use_gpu, vectors_sha256=fingerprint)
        out.calibrate(x, target_recall=target_recall, seed=seed, queries=calibration_queries)
        return out

    def calibrate(self, base: np.ndarray, target_recall: float = 0.985, n_queries: int = 500,
                  seed: int = 0, queries: np.ndarray | None = None) -> float:
        """Smallest nprobe in 1, 2, 3, 4, 6, 8, 12, ... reaching ``target_recall`` @10 vs exact on sample queries
        (``queries`` when given — e.g. real user vectors — else catalogue vectors plus noise)."""
        if self.kind not in APPROX_KINDS:
            return 1.0
        rng = np.random.default_rng(seed + 1)
        if queries is not None:
            q = np.asarray(queries, np.float32)
            q = q[rng.choice(len(q), min(n_queries, len(q)), replace=False)]
        else:
            q = base[rng.choice(len(base), min(n_queries, len(base)), replace=False)]
            q = q + rng.normal(scale=float(base.std()) * 0.5, size=q.shape).astype(np.float32)
        k = min(10, len(base))
        exact = exact_topk(base, q, k)
        nlist = self.nlist
        steps = sorted({min(nlist, int(b * 2 ** e)) for e in range(0, 20) for b in (1, 1.5)} | {nlist})
        rec = 0.0
        for nprobe in steps:  # 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ... nlist
            self._set_nprobe(nprobe)
            _, ids = self._index.search(np.ascontiguousarray(q, np.float32), k)
            rec = recall_at_k(ids, exact, k)
            if rec >= target_recall:
                break
        self.calibrated_recall = rec
        return rec

    # ------------------------------------------------------------------ search
    @staticmethod
    def _query_matrix(queries: np.ndarray) -> np.ndarray:
        """Queries as FAISS takes them: a contiguous float32 matrix (one vector becomes one row)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return q[None] if q.ndim == 1 else q

    def search_ids(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self._query_matrix(queries)
        k = max(1, min(int(k), len(self.item_ids)))
        return (self._cpu_index if self.on_gpu and k > GPU_MAX_K else self._index).search(q, k)

    def search_rows(self, queries: np.ndarray, widths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Row ``r`` searched for its top ``widths[r]``, one search per distinct width; (scores, ids) padded to
        the widest with -inf / -1. Answers depend only on the row and its width, never on the other rows of the
        call (a single search of the widest width would let a row's answer from an approximate index depend on
        its neighbours in the batch). On a GPU, rows wider than ``GPU_MAX_K`` (users who consumed thousands of
        items) are searched on the index's CPU copy, which has no such limit."""
        q = self._query_matrix(queries)
        n = len(self.item_ids)
        w = np.minimum(np.maximum(np.asarray(widths, np.int64), 1), n)
        if len(w) != len(q):
            raise ValueError(f"{len(w)} widths for {len(q)} queries")
        top = int(w.max(initial=1))
        scores = np.full((len(q), top), -np.inf, np.float32)
        ids = np.full((len(q), top), -1, np.int64)
        for width in np.unique(w).tolist():
            rows = np.flatnonzero(w == width)
            part = q if len(rows) == len(q) else q[rows]
            index = self._cpu_index if self.on_gpu and width > GPU_MAX_K else self._index
            s, i = index.search(part, width)
            scores[rows, :width], ids[rows, :width] = s, i
        return scores, ids

    def search_many(self, queries: np.ndarray, k: int,
                    exclude: Sequence[AbstractSet[str] | None] | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (item, score) per query, skipping each query's excluded items.

        Two passes: first the top ``k + min(exclusions, FIRST_PASS_MARGIN)`` of every query, which is enough
        whenever fewer excluded items rank there; then, for the rows that came out short, the top
        ``k + exclusions`` (enough for any row). Widths are per row (``row_width``), so a row's answer does not
        depend on the others in the call. On a flat index this gives the same items as one wide search, at a
        fraction of the cost (flat search time grows with k)."""
        q = self._query_matrix(queries)
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries")
        n = len(self.item_ids)
        if len(q) == 0 or min(n, k) <= 0:
            return [[] for _ in range(len(q))]
        extra = [len(e) if e else 0 for e in exclude] if exclude else [0] * len(q)
        first = [row_width(k + min(e, FIRST_PASS_MARGIN), n) for e in extra]
        out = self._filtered(*self.search_rows(q, first), k, exclude)
        short = [r for r, row in enumerate(out) if len(row) < k and first[r] < min(n, k + extra[r])]
        if short:
            widths = [row_width(k + extra[r], n) for r in short]
            again = self._filtered(*self.search_rows(q[short], widths), k,
                                   [exclude[r] for r in short] if exclude else None)
            for r, row in zip(short, again):
                out[r] = row
        return out

    def _filtered(self, scores: np.ndarray, ids: np.ndarray, k: int,
                  exclude: Sequence[AbstractSet[str] | None] | None) -> list[list[tuple[str, float]]]:
        scores, ids = scores.tolist(), ids.tolist()  # Python numbers: iterating numpy rows costs more than search
        out = []
        item_ids = self.item_ids
        for r in range(len(ids)):
            ex = exclude[r] if exclude else None
            row = []
            for i, s in zip(ids[r], scores[r]):
                if i < 0:
                    continue
                item = item_ids[i]
                if ex and item in ex:
                    continue
                row.append((item, s))
                if len(row) == k:
                    break
            out.append(row)
        return out

    def vector(self, item_id: str) -> np.ndarray | None:
        i = self._pos.get(item_id)
        if i is None:
            return None
        if self.kind == "ivf" and getattr(self._cpu_index, "direct_map", None) is not None \
                and self._cpu_index.direct_map.type == 0:  # NoMap: build the id -> list map once
            with _DIRECT_MAP_LOCK:
                self._cpu_index.make_direct_map()
        return self._cpu_index.reconstruct(i)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        faiss = _faiss()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._cpu_index, str(d / INDEX_FILE))
        (d / IDS_FILE).write_text(json.dumps(self.item_ids))
        (d / META_FILE).write_text(json.dumps({"version": self.version, "kind": self.kind, "dim": self.dim,
                                               "nprobe": self.nprobe, "n_items": len(self.item_ids),
                                               "vectors_sha256": self.vectors_sha256}))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str], use_gpu: bool | None = None) -> "ItemIndex":
        faiss = _faiss()
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        index = faiss.read_index(str(d / INDEX_FILE))
        ids = json.loads((d / IDS_FILE).read_text())
        if index.ntotal != len(ids):
            raise ValueError(f"{d}: index has {index.ntotal} vectors for {len(ids)} item ids")
        return cls(ids, index, meta["kind"], meta["version"], meta["dim"], nprobe=meta.get("nprobe"),
                   use_gpu=use_gpu, vectors_sha256=meta.get("vectors_sha256"))


def vectors_fingerprint(vectors: np.ndarray) -> str:
    """SHA-256 of the vectors as an index is built from them (float32, C order)."""
    import hashlib

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return hashlib.sha256(repr(x.shape).encode() + x.tobytes()).hexdigest()


class HotSwapIndex:
    """The current :class:`ItemIndex`, swappable atomically while queries continue."""

    def __init__(self, index: ItemIndex | None = None) -> None:
        self._lock = threading.Lock()
        self._current = index

    @property
    def current(self) -> ItemIndex | None:
        return self._current

    @property
    def version(self) -> str | None:
        cur = self._current
        return None if cur is None else cur.version

    def swap(self, new: ItemIndex) -> ItemIndex | None:
        """Install a fully built index; returns the previous one."""
        if not isinstance(new, ItemIndex):
            raise TypeError("swap needs a built ItemIndex")
        with self._lock:
            old, self._current = self._current, new
        return old

    def load_and_swap(self, directory: str | os.PathLike[str], use_gpu: bool | None = None,
                      accept: Callable[[ItemIndex], None] | None = None) -> ItemIndex:
        """Load an index and install it; ``accept(new)`` may refuse it (raise) before it becomes visible."""
        new = ItemIndex.load(directory, use_gpu=use_gpu)  # built entirely before it becomes visible
        if accept is not None:
            accept(new)
        self.swap(new)
        return new

    def search_many_versioned(self, queries: np.ndarray, k: int,
                              exclude: Sequence[AbstractSet[str] | None] | None = None):
        cur = self._current  # one read: the whole batch is answered by one version
        if cur is None:
            raise LookupError("no index loaded yet")
        return cur.version, cur.search_many(queries, k, exclude)

    def search_many(self, queries: np.ndarray, k: int,
                    exclude: Sequence[AbstractSet[str] | None] | None = None) -> list[list[tuple[str, float]]]:
        return self.search_many_versioned(queries, k, exclude)[1]
