"""Bounded counts of the most frequent keys (the popular items of a partition, a user's categories).

Space-Saving (Metwally, Agrawal & El Abbadi, 2005): a key not yet counted, when the table is full, takes the place
of the weakest key and inherits its count plus one. So a key that keeps coming always gets in (dropping the
newcomer itself, as a plain "evict the weakest" does, froze the table once every count was above 1), every key
more frequent than total ÷ capacity is in the table, a count is never below the key's true count, and the counts
add up to the number of keys seen. Ties go by key, so the table is the same whatever the batching.
"""
from __future__ import annotations

import heapq


class WeakestIndex:
    """The weakest key of one large table, in O(log n) instead of a scan of every key per newcomer (a partition's
    5,000 item counts: half a millisecond for each event of an item not counted yet, once the table was full).

    A lazy min-heap of (count, key): a key's entries never count more than the key's current count, because counts
    only grow. So the first entry whose count is its key's current count is the weakest key, ties by key; an entry
    behind its key's count goes back in with that count, and one of a key no longer counted is dropped. Built from
    the table at the first eviction (and again for another table object: a restored state) and kept in memory
    only; the table alone is the state."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._table: dict[str, int] | None = None

    def added(self, counts: dict[str, int], key: str, n: int) -> None:
        """``key`` entered ``counts`` with count ``n``."""
        if self._table is counts:
            heapq.heappush(self._heap, (n, key))

    def weakest(self, counts: dict[str, int]) -> tuple[str, int]:
        """The key with the lowest count in ``counts`` (non-empty), the smallest key among equals, and its count:
        ``min(counts.items(), key=lambda kv: (kv[1], kv[0]))``."""
        heap = self._heap
        if self._table is not counts or len(heap) > 2 * len(counts) + 64:
            self._heap = heap = [(n, key) for key, n in counts.items()]
            heapq.heapify(heap)
            self._table = counts
        while True:
            n, key = heap[0]
            now = counts.get(key)
            if now == n:
                return key, n
            if now is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (now, key))


def count(counts: dict[str, int], key: str, capacity: int, index: WeakestIndex | None = None) -> str | None:
    """Count one ``key`` in ``counts`` (at most ``capacity`` keys); returns the key it displaced, if any. ``index``:
    finds the weakest key of a large table (the same key a scan finds)."""
    seen = counts.get(key)
    if seen is not None:
        counts[key] = seen + 1
        return None
    if len(counts) < capacity:
        counts[key] = 1
        if index is not None:
            index.added(counts, key, 1)
        return None
    if index is not None:
        weakest, floor = index.weakest(counts)
    else:
        weakest, floor = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    del counts[weakest]
    counts[key] = floor + 1
    if index is not None:
        index.added(counts, key, floor + 1)
    return weakest
