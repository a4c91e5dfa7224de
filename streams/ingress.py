"""Input records from Faust's consumer to the pipeline in whole fetched batches, and their acks in bulk.

Faust's fetch loop (``Consumer._drain_messages``) turns every record into a ``ConsumerMessage`` and awaits
``wait_first(callback(message), suspend_flow.wait())`` for it, which creates two tasks per record: measured as
the largest single cost of the worker after the engine. Here the loop is the same except for the input topics:
their records go to the pipeline as the fetched list, one call per topic partition and fetch. Everything else
(changelog records during recovery, any other subscribed topic) still takes Faust's per-message path, so table
recovery is untouched.

What Faust's loop keeps per record is kept here per batch: the read offset, gaps in the offsets (compaction,
transaction markers), the high-watermark monitor, the generation check at a rebalance and the commit every
``broker_commit_every`` acks. Acks go straight into the consumer's acked-offset lists that its commit reads
(``ack_records``), as ``Consumer.ack`` would put them there one message at a time.
"""
from __future__ import annotations

import asyncio
import logging
from types import MethodType
from typing import Any, Awaitable, Callable, Iterable

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types.tuples import ack_lock

log = logging.getLogger("tidewater.ingress")

# deliver(tp, records) -> awaitable: the pipeline takes a list of aiokafka ConsumerRecords of one partition
Deliver = Callable[[Any, list], Awaitable[None]]


# Faust internals this module reads and writes (faust-streaming 0.15.3, pinned in pyproject.toml)
FAUST_INTERNALS = ("_drain_messages", "_wait_next_records", "_read_offset", "_add_gap", "_buffered_partitions",
                   "_committed_offset", "_acked", "_acked_index", "_n_acked", "_commit_every", "_to_message",
                   "perform_seek", "highwater", "commit")


def install_batch_drain(consumer: Any, input_topics: Iterable[str], deliver: Deliver) -> None:
    """Replace ``consumer._drain_messages`` (the coroutine Faust's Fetcher service runs) on this instance."""
    missing = [name for name in FAUST_INTERNALS if not hasattr(consumer, name)]
    if missing:
        raise RuntimeError(f"this faust-streaming consumer lacks {missing}: streams/ingress.py is written against "
                           "faust-streaming 0.15.3 (see pyproject.toml)")
    consumer._drain_messages = MethodType(_batch_drain_factory(frozenset(input_topics), deliver), consumer)


def _batch_drain_factory(input_topics: frozenset[str], deliver: Deliver) -> Callable[[Any, Any], Awaitable[None]]:
    async def drain(self: Any, fetcher: Any) -> None:
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        flag = CONSUMER_FETCHING  # the diagnostic flag Faust's own loop sets
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(flag)
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)  # as Faust's loop: never starve the event loop in a busy fetch loop
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:  # Faust's getmany: flow stopped (rebalance) → seek back to committed
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - Faust logs and carries on here too
                        log.warning("exception performing seek when flow not active %r", exc)
                    continue
                generation = self.app.consumer_generation_id
                for tp, batch in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break  # a rebalance started: what was fetched is re-read from the committed offsets
                    if not (active is None or tp in active or tp in self._buffered_partitions) or not batch:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in input_topics:
                        await _deliver_batch(self, tp, batch, read_offset, deliver)
                    else:
                        await _deliver_one_by_one(self, tp, batch, read_offset, callback, acks_enabled_for)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                self.diag.unset_flag(flag)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(flag)

    return drain


async def _deliver_batch(consumer: Any, tp: Any, batch: list, read_offset: Any, deliver: Deliver) -> None:
    r_offset = read_offset[tp]
    if r_offset is not None and batch[0].offset < r_offset:  # already delivered (a re-fetch): Faust drops these
        batch = [record for record in batch if record.offset >= r_offset]
        if not batch:
            return
    previous = r_offset
    for record in batch:  # offsets that never arrive (compaction, transaction markers) must not stall commits
        if previous and record.offset - previous > 1:
            # Faust's loop passes ``record.offset`` as the gap's end, so the gap also holds the record itself,
            # whose ack then duplicates it and holds the commit back a round; the gap here ends before it.
            await consumer._add_gap(tp, previous + 1, record.offset - 1)
        previous = record.offset
    await deliver(tp, batch)
    read_offset[tp] = batch[-1].offset


async def _deliver_one_by_one(consumer: Any, tp: Any, batch: list, read_offset: Any, callback: Any,
                              acks_enabled_for: Callable[[str], bool]) -> None:
    """Faust's own per-message path, for everything that is not an input topic."""
    for record in batch:
        message = consumer._to_message(tp, record)
        offset = message.offset
        r_offset = read_offset[tp]
        if r_offset is None or offset >= r_offset:
            if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                await consumer._add_gap(tp, r_offset + 1, offset)
            await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
            read_offset[tp] = offset


def ack_records(consumer: Any, tp: Any, offsets: list[int]) -> int:
    """Mark ``offsets`` of ``tp`` as processed, as ``Consumer.ack`` does per message: Faust's next commit
    advances to the first gap. Offsets below the committed one (a partition re-assigned meanwhile) are
    skipped. Returns how many were acked."""
    with ack_lock:
        committed = consumer._committed_offset[tp]
        if committed is not None and offsets and offsets[0] < committed:
            offsets = [offset for offset in offsets if offset >= committed]
        if not offsets:
            return 0
        index = consumer._acked_index[tp]
        fresh = [offset for offset in offsets if offset not in index]
        index.update(fresh)
        consumer._acked[tp].extend(fresh)
        consumer._n_acked += len(fresh)
        return len(fresh)
