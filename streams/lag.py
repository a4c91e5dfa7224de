"""Consumer lag of the worker's input partitions: ``tidewater_consumer_lag{topic, partition}``.

Every ``LAG_EVERY_S`` a Faust timer sets, per assigned input partition, ``high watermark - committed offset``:
records in the partition that this worker has not applied and committed yet (what ``kafka-consumer-groups``
calls LAG). The high watermark is the one the consumer saw in its last fetch response (``highwater(tp)``, no
request to the broker); the committed offset is Faust's record of the group's offset for the partition (read
at assignment, updated at every commit, i.e. at most ``TIDEWATER_COMMIT_INTERVAL_S`` behind what was applied).
Before the group has committed anything for a partition, its earliest offset stands in (asked once, in the
background).

Not ``high watermark - position``: the consumer's position is how far it has *fetched*, and Faust fetches far
ahead of what the batch loop has applied (measured: position reached the high watermark within a second while
a 20,000-event backlog took 15 s to process, so that difference stayed 0 the whole time).

The fetch responses' high watermark is right on Tansu 0.6 (only ListOffsets is wrong: streams/broker_quirks.py).
A transactional producer's commit or abort marker takes an offset that no consumer receives, and Faust commits
the offset after the last record it acked, so a quiet partition whose last offset is a marker stays one (or the
aborted records plus one) below its high watermark in Kafka's view. Here such a partition reads 0 once the fetch
loop has stepped over the markers and everything it delivered was committed (``markers_only``: the pipeline's
test, the one its event-time merge uses); without it the lag never fell to 0 on an idle transactional topic and
TidewaterStalled paged (found by review). ``kafka-consumer-groups`` keeps showing those offsets as lag.

Partitions no longer assigned lose their series, and so does one not fetched from since its assignment; the lag
is never negative, and nothing here raises: a failing read skips that partition (its last value stays) until the
next reading.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from streams import metrics

log = logging.getLogger("tidewater.lag")

LAG_EVERY_S = 1.0
EARLIEST_TIMEOUT_S = 2.0


class LagCollector:
    """Reads the lag, sets the gauge, removes the series of partitions that went away, feeds a sink."""

    def __init__(self, consumer_of: Any, input_topics: Iterable[str], sink: Any = None,
                 markers_only: Callable[[Any, int, int], bool] | None = None) -> None:
        self.consumer_of = consumer_of  # a callable: the app's consumer is created lazily
        self.input_topics = frozenset(input_topics)
        self.sink = sink  # LiveStats (set_lag) or None
        # (tp, committed, high watermark) -> True when every offset between them is a transaction marker
        self.markers_only = markers_only
        self.labels: set[tuple[str, str]] = set()
        self.earliest: dict[Any, int] = {}  # stand-in for "committed" before the group's first commit
        self._asking: asyncio.Future | None = None

    async def read(self) -> tuple[dict[str, dict[str, int]], set[tuple[str, str]] | None, set[tuple[str, str]]]:
        """(topic -> partition (a string, like the metric label) -> records behind, the assigned (topic,
        partition) labels, the labels of assigned partitions not fetched from yet); a partition whose lag is unknown
        is left out; labels None: no assignment known."""
        consumer = self.consumer_of()
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic in self.input_topics]
        except Exception:  # noqa: BLE001 - consumer not started yet, or rebuilt at a rebalance
            return {}, None, set()
        committed_of = getattr(consumer, "_committed_offset", {})  # faust.transport.consumer.Consumer
        lag: dict[str, dict[str, int]] = {}
        missing = []
        unfetched = set()
        for tp in assigned:
            try:
                highwater = consumer.highwater(tp)
                if highwater is None or highwater < 0:  # nothing fetched from it since its assignment
                    unfetched.add((tp.topic, str(tp.partition)))
                    continue
                committed = committed_of.get(tp)
                known = committed is not None  # the group's own (not the earliest offset standing in)
                if committed is None:
                    committed = self.earliest.get(tp)
                    if committed is None:
                        missing.append(tp)
                        continue
                behind = max(0, int(highwater) - int(committed))
                if behind and known and self.markers_only is not None \
                        and self.markers_only(tp, int(committed), int(highwater)):
                    behind = 0
                lag.setdefault(tp.topic, {})[str(tp.partition)] = behind
            except Exception:  # noqa: BLE001 - unassigned meanwhile, consumer stopping
                continue
        if missing and (self._asking is None or self._asking.done()):  # a later reading has them
            self._asking = asyncio.ensure_future(self._ask_earliest(consumer, missing))
        self.earliest = {tp: o for tp, o in self.earliest.items() if tp in set(assigned)}
        return lag, {(tp.topic, str(tp.partition)) for tp in assigned}, unfetched

    async def _ask_earliest(self, consumer: Any, tps: list) -> None:
        """In the background: a reading itself only reads memory (a timer that waits on the broker overlaps)."""
        try:
            found = await asyncio.wait_for(consumer.earliest_offsets(*tps), EARLIEST_TIMEOUT_S)
            self.earliest.update({tp: int(o) for tp, o in found.items() if o is not None and o >= 0})
        except Exception:  # noqa: BLE001
            log.debug("earliest offsets not read", exc_info=True)

    async def collect(self) -> dict[str, dict[str, int]]:
        try:
            lag, assigned, unfetched = await self.read()
            if assigned is None:
                return {}
            now_labels = {(topic, p) for topic, parts in lag.items() for p in parts}
            for topic, parts in lag.items():
                for partition, behind in parts.items():
                    metrics.LAG.labels(topic, partition).set(behind)
            # a partition revoked and assigned again within one rebalance is not fetched from yet: its value from
            # before would stay (found by review)
            for topic, partition in (self.labels - assigned) | (self.labels & unfetched):
                try:
                    metrics.LAG.remove(topic, partition)
                except KeyError:
                    pass
            self.labels = ((self.labels & assigned) - unfetched) | now_labels
            if self.sink is not None:
                self.sink.set_lag(lag)
            return lag
        except Exception:  # noqa: BLE001 - a metric must not kill the worker
            log.debug("consumer lag not read", exc_info=True)
            return {}


def install(app: Any, input_topics: Iterable[str], sink: Any = None, every_s: float = LAG_EVERY_S,
            markers_only: Callable[[Any, int, int], bool] | None = None) -> LagCollector:
    collector = LagCollector(lambda: app.consumer, input_topics, sink, markers_only)

    @app.timer(interval=every_s)
    async def consumer_lag() -> None:
        await collector.collect()

    return collector
