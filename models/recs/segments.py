"""User segments: k-means (``faiss.Kmeans``) over unit-length user vectors, trained with the recommender.

The centroids are saved with the recs model version (``segments.npy``) and refreshed whenever the recommender
is retrained; the stream assigns a user to the nearest centroid (largest cosine) when their vector changes,
keeps the id in the profile and stamps it on offers and recommendations.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_SEGMENTS = 8


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def train_segments(user_vectors: np.ndarray, k: int = DEFAULT_SEGMENTS, seed: int = 0, niter: int = 25) -> np.ndarray:
    """(k, d) unit centroids; fewer users than ``4 k`` gives fewer segments (never more segments than users)."""
    import faiss

    x = np.ascontiguousarray(_unit(user_vectors))
    k = max(1, min(k, len(x) // 4 or 1))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
    km.train(x)
    centroids = _unit(km.centroids)
    # a stable numbering for the same data and seed: order segments by size, then by centroid bytes
    sizes = np.bincount(assign_segments(centroids, x), minlength=k)
    order = sorted(range(k), key=lambda i: (-sizes[i], centroids[i].tobytes()))
    return np.ascontiguousarray(centroids[order])


def assign_segments(centroids: np.ndarray, vectors: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Nearest centroid (largest cosine) per vector."""
    v = _unit(np.atleast_2d(np.asarray(vectors, np.float32)))
    return np.argmax(v @ centroids.T, axis=1)
