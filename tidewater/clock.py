"""Event time: a deterministic merge of the input topics per partition, the watermark, and timer ticks.

Kafka orders records within one topic partition only. A user's clicks and purchases live in two topics, so
the order in which the worker sees them depends on fetch timing. To make replays byte-identical, the events
of partition *p* of every input topic are merged by (event time, source rank, offset), comparing only the
heads of the per-source queues (so each source's offset order is kept, which the idempotency markers need).
A head is released only when every other source has a head to compare with, is known to be caught up (the
Kafka edge has handed over everything up to the partition's high watermark: nothing earlier can be waiting
there), or has been silent for ``idle_s`` seconds of the worker's starved time (a live source that goes quiet
must not stall the others forever). With the whole input available, as in a replay, a source is caught up only
at its true end, and the result depends only on the data.

The watermark is the largest event time released so far. Timer ticks (e.g. every event-time day) fire when
the watermark crosses a tick boundary, before the event that crossed it is applied, so inactivity checks run
at the same points of the data in every replay.
"""
from __future__ import annotations

from collections import deque
from typing import Generic, Iterator, NamedTuple, TypeVar

H = TypeVar("H")

MAX_TICKS_PER_JUMP = 10_000  # a huge gap in the data fires only the last ticks
BEHIND_PATIENCE = 10  # a source known to have unfetched records is waited for this many idle periods


class MergeItem(NamedTuple, Generic[H]):
    """Ordered by (ts, rank, offset): a tuple, so creating and comparing one stays in C (once per event).
    No two items share (rank, offset), so ``handle`` is never compared."""

    ts: float
    rank: int
    offset: int
    handle: H


class EventTimeMerger(Generic[H]):
    """Merge of N sources (each already in offset order) into one event-time order."""

    def __init__(self, sources: tuple[str, ...], idle_s: float, now: float) -> None:
        self.sources = sources
        self.rank = {s: i for i, s in enumerate(sources)}
        self.idle_s = idle_s
        self.queues: dict[str, deque[MergeItem[H]]] = {s: deque() for s in sources}
        self.last_arrival = {s: now for s in sources}

    def push(self, source: str, ts: float, offset: int, handle: H, now: float) -> None:
        self.queues[source].append(MergeItem(ts, self.rank[source], offset, handle))
        self.last_arrival[source] = now

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def waiting_sources(self) -> list[str]:
        """The sources whose records wait for another source's (after ``pop_ready``: those ahead in event time)."""
        return [source for source, queue in self.queues.items() if queue]

    def pop_ready(self, now: float, caught_up: frozenset[str] = frozenset(),
                  behind: frozenset[str] = frozenset()) -> Iterator[MergeItem[H]]:
        """Release heads in merge order while every source has a head, is caught up, or is idle. A source known to
        be ``behind`` (records in Kafka not fetched yet: a slow fetch, not a quiet source) is idle only after
        ``BEHIND_PATIENCE`` times as long: releasing the others past it would make the merge depend on fetch
        timing, where a replay must depend on the data alone. Not forever: a high watermark counting offsets
        that never arrive (transaction markers) must not stall the partition."""
        queues = self.queues
        patience = self.idle_s * BEHIND_PATIENCE
        while True:
            best: MergeItem[H] | None = None
            best_source = ""
            for source, queue in queues.items():
                if queue:
                    head = queue[0]
                    if best is None or head < best:
                        best, best_source = head, source
                elif source not in caught_up and \
                        now - self.last_arrival[source] < (patience if source in behind else self.idle_s):
                    return  # a live source might still send something earlier
            if best is None:
                return
            queues[best_source].popleft()
            yield best

    def drop(self) -> list[MergeItem[H]]:
        items = [item for q in self.queues.values() for item in q]
        for q in self.queues.values():
            q.clear()
        return items


def crossed_ticks(next_tick: float, ts: float, tick_s: float) -> tuple[list[float], float]:
    """Tick boundaries in [next_tick, ts] and the following next_tick."""
    if ts < next_tick:
        return [], next_tick
    n = int((ts - next_tick) // tick_s) + 1
    first = max(0, n - MAX_TICKS_PER_JUMP)
    ticks = [next_tick + i * tick_s for i in range(first, n)]
    return ticks, next_tick + n * tick_s


def first_tick_after(ts: float, tick_s: float) -> float:
    return (ts // tick_s + 1) * tick_s
