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
