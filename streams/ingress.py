"""Input records from Faust's consumer to the pipeline in whole fetched batches, and their acks in bulk.

Faust's fetch loop (``Consumer._drain_messages``) turns every record into a ``ConsumerMessage`` and awaits
``wait_first(callback(message), suspend_flow.wait())`` for it, which creates two tasks per record: measured as
the largest single cost of the worker after the engine. Here the loop is the same except for the input topics:
their records go to the pipeline as the fetched list, one call per topic partition and fetch.

Changelog records of a table being restored (``restore_batch``) go straight into Faust's recovery in fetched
batches, with its own offset bookkeeping, buffers, batch writes and end-of-recovery signal; Faust's per-record
path made a cold restore cost about 180 µs of CPU per record. Everything else (standby partitions, a restore
while a rebalance suspends the flow, any other subscribed topic) still takes Faust's per-message path.

What Faust's loop keeps per record is kept here per batch: the read offset, gaps in the offsets (compaction,
transaction markers), the high-watermark monitor, the generation check at a rebalance and the commit every
``broker_commit_every`` acks. Acks go straight into the consumer's acked-offset lists that its commit reads
(``ack_records``), as ``Consumer.ack`` would put them there one message at a time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from types import MethodType
from typing import Any, Awaitable, Callable, Iterable

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types.tuples import ack_lock

from streams import metrics

log = logging.getLogger("tidewater.ingress")

# deliver(tp, records) -> awaitable: the pipeline takes a list of aiokafka ConsumerRecords of one partition
Deliver = Callable[[Any, list], Awaitable[None]]


# Faust internals this module reads and writes (faust-streaming 0.15.3, pinned in pyproject.toml)
FAUST_INTERNALS = ("_drain_messages", "_wait_next_records", "_read_offset", "_add_gap", "_buffered_partitions",
                   "_committed_offset", "_acked", "_acked_index", "_n_acked", "_commit_every", "_to_message",
                   "perform_seek", "seek_to_committed", "_thread", "highwater", "commit", "on_buffer_full",
                   "on_buffer_drop", "_get_active_partitions", "_paused_partitions", "assignment")


# What ``restore_batch`` reads and writes of Faust's ``Recovery`` (declared on the class or its annotations)
RECOVERY_INTERNALS = ("active_tps", "tp_to_table", "active_offsets", "buffers", "_active_events_received_at",
                      "_last_active_event_processed_at", "_processing_times", "num_samples_required_for_estimate",
                      "_last_flush_at", "in_recovery", "need_recovery", "flush_buffers", "_set_recovery_ended",
                      "signal_recovery_end")


def _missing_recovery_internals(recovery_class: type) -> list[str]:
    declared: dict[str, Any] = {}
    for cls in recovery_class.__mro__:
        declared.update(getattr(cls, "__annotations__", {}))
    return [name for name in RECOVERY_INTERNALS if name not in declared and not hasattr(recovery_class, name)]


def install_batch_drain(consumer: Any, input_topics: Iterable[str], deliver: Deliver,
                        recovery_class: type | None = None) -> None:
    """Replace ``consumer._drain_messages`` (the coroutine Faust's Fetcher service runs) on this instance."""
    if recovery_class is None:
        from faust.tables.recovery import Recovery as recovery_class
    missing = [name for name in FAUST_INTERNALS if not hasattr(consumer, name)]
    missing += [f"Recovery.{name}" for name in _missing_recovery_internals(recovery_class)]
    if missing:
        raise RuntimeError(f"this faust-streaming consumer lacks {missing}: streams/ingress.py is written against "
                           "faust-streaming 0.15.3 (see pyproject.toml)")
    topics = frozenset(input_topics)
    consumer._drain_messages = MethodType(_batch_drain_factory(topics, deliver), consumer)

    async def seek_to_committed(self: Any) -> dict:
        thread = self._thread
        return await thread.call_thread(seek_to_committed_or_beginning, thread._ensure_consumer(), topics)

    consumer.seek_to_committed = MethodType(seek_to_committed, consumer)


def hold_back(consumer: Any, input_topics: Iterable[str], ahead: set[Any]) -> None:
    """Fetch no more of the input partitions in ``ahead`` (topic partitions whose records wait in the event-time
    merge for another topic's), and fetch again those held back before that are no longer in it.

    Faust's own switch for a partition whose stream buffer is full: ``on_buffer_full`` takes it out of the
    partitions the fetch loop asks aiokafka for (which then fetches at most one more batch of it), and records
    already fetched are still delivered (the drain takes ``_buffered_partitions`` too). Stopping every fetch
    instead, as the worker did, also stopped the topic the merge was waiting for: it then let the held records
    go after its idle time, ahead of records that were in Kafka, and a replay's outputs depended on fetch timing
    (found by review). A partition is given back only if it is still assigned and not paused (Faust pauses
    partitions while their tables recover, and a revoked partition must not be fetched)."""
    topics = frozenset(input_topics)
    active = consumer._get_active_partitions()
    for tp in ahead:
        if tp in active:
            consumer.on_buffer_full(tp)  # no-op during a table recovery, when Faust manages the active set
    held_back = [tp for tp in consumer._buffered_partitions if tp.topic in topics and tp not in ahead]
    if held_back:
        assigned = consumer.assignment()
        for tp in held_back:
            if tp in assigned and tp not in consumer._paused_partitions:
                consumer.on_buffer_drop(tp)
            else:
                consumer._buffered_partitions.discard(tp)


async def seek_to_committed_or_beginning(consumer: Any, topics: frozenset[str]) -> dict:
    """``AIOKafkaConsumer.seek_to_committed``, which Faust's ``perform_seek`` uses to re-read what it dropped at a
    rebalance or while the flow was stopped; but aiokafka seeks only partitions whose committed offset is above 0,
    and leaves the others where the dropped fetch left them. A group that had not committed yet (a first start,
    or a worker killed before its first commit) then never read the records fetched while the flow was stopped:
    the worker sat idle on a backlog, its profiles short of those events (seen as a flaky
    test_regression_faust_596 in CI). Partitions of ``topics`` with no committed offset go back to their beginning,
    where ``auto_offset_reset=earliest`` started them."""
    committed = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
    if uncommitted:
        log.info("no committed offset for %s: reading them again from their beginning",
                 ", ".join(sorted(map(tp_name, uncommitted))))
        await consumer.seek_to_beginning(*uncommitted)
    return committed


def fetch_positions(consumer: Any, topics: frozenset[str]) -> dict[Any, int]:
    """aiokafka's fetch position of each assigned partition of ``topics`` that has one: the offset after the last
    record its fetches returned, past any transaction marker that followed (aiokafka steps over control batches; a
    record offset alone never reaches a high watermark that counts a trailing commit marker). Read between
    fetches, where the consumer thread does not move it."""
    try:
        tps = [tp for tp in consumer.assignment() if tp.topic in topics]
        assignment = consumer._thread._ensure_consumer()._subscription.subscription.assignment
    except Exception:  # noqa: BLE001 - not started, stopping, or no assignment: nothing known
        return {}
    out = {}
    for tp in tps:
        try:
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position:
                out[tp] = state.position
        except Exception:  # noqa: BLE001 - revoked meanwhile
            continue
    return out


def tp_name(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"


class FetchLoopState:
    """What the fetch loop is doing, for GET /stats: a worker that processes nothing shows where it waits. The
    loop records plain values; names are formatted only when /stats asks."""

    def __init__(self) -> None:
        self.turns = 0
        self.records = 0
        self.current, self.current_tp = "starting", None
        self.since = time.monotonic()
        self.last_fetched: dict[Any, tuple[int, int] | None] = {}  # tp -> (first, last) offset of its last fetch
        self.skipped = 0  # input records below the read offset (re-fetched): Faust drops these too

    def step(self, what: str, tp: Any = None) -> None:
        self.current, self.current_tp, self.since = what, tp, time.monotonic()

    def fetched(self, records: Any) -> None:
        self.turns += 1
        for tp, batch in (records or {}).items():
            self.records += len(batch)
            self.last_fetched[tp] = (batch[0].offset, batch[-1].offset) if batch else None

    def as_dict(self) -> dict[str, Any]:
        step = self.current if self.current_tp is None else f"{self.current} {tp_name(self.current_tp)}"
        return {"turns": self.turns, "records": self.records, "skipped": self.skipped, "step": step,
                "step_for_s": round(time.monotonic() - self.since, 3),
                "last_fetched": {tp_name(tp): None if span is None else list(span)
                                 for tp, span in list(self.last_fetched.items())}}


def consumer_state(consumer: Any) -> dict[str, Any]:
    """The consumer's flow and partitions as the fetch loop sees them (GET /stats), for a worker that sits idle
    with a backlog: a stopped flow, paused partitions, or a fetch loop waiting somewhere."""
    def names(tps: Iterable[Any] | None) -> list[str] | None:
        return None if tps is None else sorted(map(tp_name, tps))

    def by_name(offsets: Any) -> dict[str, Any]:
        return {tp_name(tp): offset for tp, offset in list(offsets.items())}

    try:
        assignment = consumer.assignment()
    except Exception:  # noqa: BLE001 - not started yet, or stopping
        assignment = set()
    loop = getattr(consumer, "_tidewater_fetch_loop", None)
    return {"flow_active": bool(getattr(consumer, "flow_active", False)),
            "assigned": names(assignment),
            "active": names(getattr(consumer, "_active_partitions", None)),
            "paused": names(getattr(consumer, "_paused_partitions", ())),
            "buffered": names(getattr(consumer, "_buffered_partitions", ())),
            "read_offset": by_name(getattr(consumer, "_read_offset", {})),
            "committed": by_name(getattr(consumer, "_committed_offset", {})),
            "fetch_loop": loop.as_dict() if loop is not None else None}


def _batch_drain_factory(input_topics: frozenset[str], deliver: Deliver) -> Callable[[Any, Any], Awaitable[None]]:
    async def drain(self: Any, fetcher: Any) -> None:
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        flag = CONSUMER_FETCHING  # the diagnostic flag Faust's own loop sets
        loop_state = self._tidewater_fetch_loop = FetchLoopState()
        # input tp -> (its read offset, aiokafka's fetch position), published once everything a fetch returned was
        # delivered: every offset below the position was then delivered or is a marker (source_status)
        fetched_through = self._tidewater_fetched_through = {}
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(flag)
                loop_state.step("fetching")
                records, active = await self._wait_next_records(1.0)
                # before any await: the positions this fetch left, markers included (read only when published)
                positions = fetch_positions(self, input_topics) if records is not None and self.flow_active else {}
                loop_state.fetched(records)
                await asyncio.sleep(0)  # as Faust's loop: never starve the event loop in a busy fetch loop
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:  # Faust's getmany: flow stopped (rebalance) → seek back to committed
                    fetched_through.clear()
                    loop_state.step("seeking to committed offsets")
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - Faust logs and carries on here too
                        log.warning("exception performing seek when flow not active %r", exc)
                    continue
                generation = self.app.consumer_generation_id
                complete = True
                for tp, batch in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        complete = False
                        break  # a rebalance started: what was fetched is re-read from the committed offsets
                    if not (active is None or tp in active or tp in self._buffered_partitions) or not batch:
                        if batch:  # skipped, as Faust's loop skips them: the position is past records not delivered
                            positions.pop(tp, None)
                            fetched_through.pop(tp, None)
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in input_topics:
                        loop_state.step("delivering", tp)
                        await _deliver_batch(self, tp, batch, read_offset, deliver, generation)
                    elif not restore_batch(self, tp, batch, read_offset):
                        table = self.app.tables.recovery.tp_to_table.get(tp)
                        if table is not None:
                            metrics.RESTORED.labels(table.name, "faust").inc(len(batch))
                        await _deliver_one_by_one(self, tp, batch, read_offset, callback, acks_enabled_for)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                if complete and self.flow_active and self.app.consumer_generation_id == generation:
                    for tp, position in positions.items():
                        fetched_through[tp] = (read_offset.get(tp), position)
                else:
                    fetched_through.clear()
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


async def _deliver_batch(consumer: Any, tp: Any, batch: list, read_offset: Any, deliver: Deliver,
                         generation: int) -> None:
    """``generation``: the consumer generation when ``batch`` was fetched. A rebalance that completes while the
    gaps are recorded (they await a lock) must not let the batch through: the pipeline would take it as fetched
    after the revocation and apply it ahead of the re-read of what the revocation dropped (found by review)."""
    r_offset = read_offset[tp]
    if r_offset is not None and batch[0].offset < r_offset:  # already delivered (a re-fetch): Faust drops these
        n = len(batch)
        batch = [record for record in batch if record.offset >= r_offset]
        loop_state = getattr(consumer, "_tidewater_fetch_loop", None)
        if loop_state is not None:
            loop_state.skipped += n - len(batch)
        if not batch:
            return
    previous = r_offset
    for record in batch:  # offsets that never arrive (compaction, transaction markers) must not stall commits
        if previous is not None and record.offset - previous > 1:
            # Faust's loop passes ``record.offset`` as the gap's end, so the gap also holds the record itself,
            # whose ack then duplicates it and holds the commit back a round; the gap here ends before it.
            await consumer._add_gap(tp, previous + 1, record.offset - 1)
        previous = record.offset
    if not consumer.flow_active or consumer.app.consumer_generation_id != generation:
        return  # a rebalance came meanwhile: Faust re-reads from the committed offsets
    await deliver(tp, batch)  # may wait (a full inbox) across a rebalance
    if consumer.flow_active and consumer.app.consumer_generation_id == generation:
        read_offset[tp] = batch[-1].offset  # else Faust has reset it, and this batch is re-read


async def _deliver_one_by_one(consumer: Any, tp: Any, batch: list, read_offset: Any, callback: Any,
                              acks_enabled_for: Callable[[str], bool]) -> None:
    """Faust's own per-message path, for what is neither an input topic nor a batch restore (``restore_batch``)."""
    for record in batch:
        message = consumer._to_message(tp, record)
        offset = message.offset
        r_offset = read_offset[tp]
        if r_offset is None or offset >= r_offset:
            if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                await consumer._add_gap(tp, r_offset + 1, offset)
            await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
            read_offset[tp] = offset


class _ChangelogMessage:
    """What a table store reads of a changelog record while it restores (``apply_changelog_batch``)."""

    __slots__ = ("tp", "topic", "partition", "offset", "key", "value")

    def __init__(self, tp: Any, record: Any) -> None:
        self.tp, self.topic, self.partition = tp, tp.topic, tp.partition
        self.offset, self.key, self.value = record.offset, record.key, record.value


class _ChangelogEvent:
    """A changelog record as Faust's recovery buffers it. The tables' key and value codecs are raw bytes, so
    the decoded key and value are the record's own."""

    __slots__ = ("message", "key", "value")

    def __init__(self, message: _ChangelogMessage) -> None:
        self.message, self.key, self.value = message, message.key, message.value


def restore_batch(consumer: Any, tp: Any, batch: list, read_offset: Any) -> bool:
    """A fetched batch of an *active* changelog partition straight into Faust's recovery, as
    ``Recovery._slurp_changelogs`` takes it one record at a time: the same offset bookkeeping and buffer, the
    table's batch write when the buffer is full, and the end of recovery signalled when nothing remains.

    Faust's path costs about 180 µs of CPU per changelog record (a message object, ``wait_first`` with two tasks,
    the topic conductor, a flow-controlled queue, ``asyncio.wait_for``, a recount of every partition's remaining
    offsets), which makes a cold restore of a million profiles take minutes. Returns False, leaving the batch to
    Faust's path, where this does not apply: not an active changelog partition being restored (standbys, other
    topics), flow suspended by a rebalance, a table with a changelog callback or without raw bytes codecs."""
    app = consumer.app
    recovery = app.tables.recovery
    if tp not in recovery.active_tps or consumer.suspend_flow.is_set():
        return False
    table = recovery.tp_to_table.get(tp)
    if table is None or table._on_changelog_event is not None or not _raw_bytes(table):
        return False
    r_offset = read_offset[tp]
    offsets = recovery.active_offsets
    seen = offsets.get(tp)
    buf = recovery.buffers[table]
    added = 0
    for record in batch:
        offset = record.offset
        if (r_offset is None or offset >= r_offset) and (seen is None or offset > seen):
            buf.append(_ChangelogEvent(_ChangelogMessage(tp, record)))
            seen = offset
            added += 1
    if batch and (r_offset is None or batch[-1].offset >= r_offset):
        read_offset[tp] = batch[-1].offset
    if not added:
        return True
    offsets[tp] = seen
    metrics.RESTORED.labels(table.name, "batch").inc(added)
    now = time.monotonic()
    recovery._active_events_received_at[tp] = now
    if len(buf) >= table.recovery_buffer_size:
        table.apply_changelog_batch(buf)
        buf.clear()
        recovery._last_flush_at = now
    last = recovery._last_active_event_processed_at
    if last is not None:  # Faust's estimate of the time left takes per-record processing times
        recovery._processing_times.append((time.monotonic() - last) / added)
        if len(recovery._processing_times) > recovery.num_samples_required_for_estimate:
            recovery._processing_times.popleft()
    recovery._last_active_event_processed_at = time.monotonic()
    if recovery.in_recovery and not recovery.need_recovery():  # as _slurp_changelogs ends a recovery
        recovery.flush_buffers()
        recovery._set_recovery_ended()
        recovery.signal_recovery_end.set()
    return True


def _raw_bytes(table: Any) -> bool:
    return table.key_type is bytes and table.value_type is bytes


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
