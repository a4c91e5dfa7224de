"""The item index on a GPU (``faiss-gpu``): the same answers as on the CPU, save/load and hot swap across devices.

Skipped where faiss has no GPU build or sees no GPU (CI: ``faiss-cpu``). ``bench/gpu_checks.sh`` runs them.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from models.recs.index import GPU_MAX_K, HotSwapIndex, ItemIndex, gpu_available, recall_at_k

pytestmark = pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")


def _catalogue(n: int, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d)).astype(np.float32)
    base = centres[rng.integers(0, 64, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = base[rng.choice(n, 200, replace=False)] + 0.2 * rng.standard_normal((200, d)).astype(np.float32)
    return [f"i{j}" for j in range(n)], base, q


def _items(rows):
    return [[it for it, _ in row] for row in rows]


def test_flat_index_on_the_gpu_answers_as_on_the_cpu(tmp_path):
    ids, base, q = _catalogue(3000)
    gpu = ItemIndex.build(ids, base, kind="flat", use_gpu=True)
    cpu = ItemIndex.build(ids, base, kind="flat", use_gpu=False)
    assert gpu.on_gpu and not cpu.on_gpu
    exclude = [set(ids[j] for j in range(r, 3000, 7)) for r in range(len(q))]
    g, c = gpu.search_many(q, 20, exclude), cpu.search_many(q, 20, exclude)
    for rg, rc in zip(g, c):
        assert len(rg) == 20
        np.testing.assert_allclose([s for _, s in rg], [s for _, s in rc], rtol=1e-4, atol=1e-4)
    agree = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(_items(g), _items(c))])
    assert agree > 0.99  # only near-ties may swap places
    # saved from the GPU, loaded on the CPU (save always writes the CPU index)
    loaded = ItemIndex.load(gpu.save(tmp_path / "idx"), use_gpu=False)
    assert _items(loaded.search_many(q, 20, exclude)) == _items(c)


def test_ivf_on_the_gpu_reaches_its_calibrated_recall():
    ids, base, q = _catalogue(60_000)
    idx = ItemIndex.build(ids, base, kind="auto", use_gpu=True)
    assert idx.on_gpu and idx.kind == "ivf"  # fast-scan PQ has no GPU implementation
    exact = ItemIndex.build(ids, base, kind="flat", use_gpu=False)
    _, approx_ids = idx.search_ids(q, 10)
    _, exact_ids = exact.search_ids(q, 10)
    assert recall_at_k(approx_ids, exact_ids, 10) >= 0.95


def test_regression_rows_wider_than_the_gpu_selection_limit_are_answered():
    """A GPU search takes at most GPU_MAX_K results per row; a user who consumed more items than that (the row's
    width is k plus its exclusions) still gets k results, the same as on the CPU."""
    ids, base, q = _catalogue(GPU_MAX_K + 3000)
    gpu = ItemIndex.build(ids, base, kind="flat", use_gpu=True)
    cpu = ItemIndex.build(ids, base, kind="flat", use_gpu=False)
    heavy = set(ids[: GPU_MAX_K + 500])
    exclude = [heavy, None, {ids[1]}]
    g, c = gpu.search_many(q[:3], 10, exclude), cpu.search_many(q[:3], 10, exclude)
    assert [len(r) for r in g] == [10, 10, 10]
    assert _items(g) == _items(c)


def test_hot_swap_between_gpu_indexes_under_concurrent_queries(tmp_path):
    ids, base, q = _catalogue(2000)
    first = ItemIndex.build(ids, base, kind="flat", version="one", use_gpu=True)
    ItemIndex.build(ids, -base, kind="flat", version="two", use_gpu=False).save(tmp_path / "two")
    swap = HotSwapIndex(first)
    seen, errors, stop = set(), [], threading.Event()

    def query():
        try:
            while not stop.is_set():
                version, rows = swap.search_many_versioned(q[:8], 5)
                assert all(len(r) == 5 for r in rows)
                seen.add(version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=query)
    t.start()
    new = swap.load_and_swap(tmp_path / "two", use_gpu=True)
    stop.set()
    t.join()
    assert not errors and new.on_gpu and swap.version == "two"
    assert _items(swap.search_many(q[:8], 5)) == _items(
        ItemIndex.build(ids, -base, kind="flat", use_gpu=False).search_many(q[:8], 5))
