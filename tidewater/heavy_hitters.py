"""Bounded counts of the most frequent keys (the popular items of a partition, a user's categories).

Space-Saving (Metwally, Agrawal & El Abbadi, 2005): a key not yet counted, when the table is full, takes the place
of the weakest key and inherits its count plus one. So a key that keeps coming always gets in (dropping the
newcomer itself, as a plain "evict the weakest" does, froze the table once every count was above 1), every key
more frequent than total ÷ capacity is in the table, a count is never below the key's true count, and the counts
add up to the number of keys seen. Ties go by key, so the table is the same whatever the batching.
"""
from __future__ import annotations


def count(counts: dict[str, int], key: str, capacity: int) -> str | None:
    """Count one ``key`` in ``counts`` (at most ``capacity`` keys); returns the key it displaced, if any."""
    seen = counts.get(key)
    if seen is not None:
        counts[key] = seen + 1
        return None
    if len(counts) < capacity:
        counts[key] = 1
        return None
    weakest, floor = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    del counts[weakest]
    counts[key] = floor + 1
    return weakest
