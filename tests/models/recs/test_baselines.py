"""The recommender baselines (models/recs/baselines.py) on their own."""
from __future__ import annotations

import tracemalloc

import numpy as np

from models.recs.baselines import ItemKNN


def test_regression_item_knn_memory_is_bounded_and_the_chunking_changes_nothing(monkeypatch):
    """Chunks of 2,048 rows of the dense co-occurrence block took about 6 × 2048 × n_items × 4 B at once: 12 GB at
    235k items (found by review). Chunks are now sized to ``CHUNK_BYTES``; each row is computed alone, so the
    similarities are the same whatever the chunk."""
    rng = np.random.default_rng(0)
    n = 4000
    seqs = [rng.integers(0, n, 15) for _ in range(1500)]
    monkeypatch.setattr(ItemKNN, "CHUNK_BYTES", 10**12)
    whole = ItemKNN().fit(seqs, n).sim
    monkeypatch.setattr(ItemKNN, "CHUNK_BYTES", 8 * 1024 * 1024)
    tracemalloc.start()
    try:
        chunked = ItemKNN().fit(seqs, n).sim
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (whole != chunked).nnz == 0 and whole.nnz > 0
    assert peak < 3 * 8 * 1024 * 1024 + 40 * whole.nnz  # the budget (with slack) plus the result's triplets


def test_regression_als_fits_without_the_openblas_threads_warning():
    """implicit warned at every evaluation that OpenBLAS used 2 threads: the variable the baseline set came after
    numpy had loaded OpenBLAS (found by the recs CLI review)."""
    import warnings

    from threadpoolctl import threadpool_limits

    from models.recs.baselines import ALS

    seqs = [np.random.default_rng(s).integers(0, 30, 8) for s in range(40)]
    with warnings.catch_warnings(), threadpool_limits(2, "blas"):  # as `evaluate recs --threads 2` sets it
        warnings.simplefilter("error", RuntimeWarning)
        ALS(factors=4, iterations=2, threads=2).fit(seqs, 30)
