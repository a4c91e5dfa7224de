"""The Faust app: topics → the batch pipeline → profile table → engine → output topics.

Faust owns the consumer group, offsets, acks and commits, the tables with their changelogs and recovery, and
the web server. What it does not do here is the per-message stream path (a message, two tasks, an Event, a
queue hop, processors and sensors per record), which measured at ~15k records/s before any work was done.
Instead the consumer's fetch loop hands each fetched list of input records to an in-memory inbox
(``streams/ingress.py``); one task takes the inbox in batches and hands the records to one pure
``PartitionEngine`` per partition (in the executor thread). Send tasks then produce each batch's outputs, then,
once Kafka has them, its changelog records, then write each changed profile once to RocksDB
(``streams/table_io.py``) and ack the input records (``Pipeline._send_loop``), so Faust commits what was applied
and a stored profile never runs ahead of its outputs.

Records held in the event-time merge are not acked until applied. At a rebalance, Faust commits what was
acked; the revoke handler then drops the inbox and the engines of revoked partitions, whose records the next
owner re-reads from the committed offsets.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import faust
from faust.types import TP

from streams import metrics
from streams.ingress import ack_records, hold_back, install_batch_drain
from streams.kafka_config import configure_worker_consumer, faust_credentials
from streams.live_stats import LiveStats
from streams.local_state import guard_against_stale_partitions, mark_caught_up, mark_open_partitions_caught_up
from streams.producing import WHOLE_MAX_BYTES, BatchSender, delivered, key_partition
from streams.table_io import PartitionTable
from tidewater.engine import (EngineConfig, PartitionEngine, PartitionState, answer_recs_together,
                              can_answer_together)
from tidewater.profile import Profile, decode_activity, decode_profile, encode_profile
from tidewater.settings import Settings, url_host

log = logging.getLogger("tidewater.worker")
ENGINE_STEP_WAIT_S = 5.0  # a stop past its budget waits this long at most for the engine thread's step

PROFILES_TABLE = "profiles"
GATHER_STEP_S = 0.001  # a batch keeps growing while each millisecond brings more records
STATE_TABLE = "partition-state"


def freeze_heap() -> float:
    """Move every object alive now (the imported libraries, the loaded models) out of the cyclic garbage
    collector's reach; returns the seconds it took. With torch and transformers loaded, a full collection
    walks millions of long-lived objects: measured at 2,000 events/s, 100-210 ms pauses of the event loop
    and the engine thread, far above the latency of a batch. Unfreeze first so that objects frozen before
    (an old model after a hot reload) can be collected."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


class AckTimes:
    """Wall time of the first and the latest acked batch, and how many records the first one held: with the
    records acked so far (``Pipeline.processed``), a backlog's processing rate is
    ``(processed - first_count) / (last_at - first_at)``, timed by the worker itself (a poller of /stats sees
    steps of a whole batch, late while a big batch runs on the event loop)."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.first_count = 0
        self.last_at: float | None = None

    def acked(self, n: int, now: float) -> None:
        if self.first_at is None:
            self.first_at, self.first_count = now, n
        self.last_at = now

    def as_dict(self) -> dict[str, float | int | None]:
        return {"first_at": self.first_at, "first_count": self.first_count, "last_at": self.last_at}


class ProfileCache:
    """Decoded profiles of the users this worker owns, written through after every batch (a RocksDB read and
    a msgpack decode per event measured as 15 % of the worker's CPU). Shared by the partitions' views. Bounded
    (``TIDEWATER_PROFILE_CACHE_USERS``): the least recently written profile goes first, since a decoded profile
    takes about 13 kB of memory (up to about 50 kB for a user with full rings of both types)."""

    def __init__(self, max_cached: int = 100_000) -> None:
        # keyed by (partition, user): a user whose records reach two partitions (a producer that does not hash keys
        # with murmur2) has a profile in each, as on two workers; keyed by user alone, one worker's two engines
        # took and changed one profile object and wrote it to both partitions (found by a scale-out review)
        self.profiles: OrderedDict[tuple[int, str], Profile] = OrderedDict()
        self.max_cached = max(0, max_cached)

    def get(self, partition: int, user_id: str) -> Profile | None:
        return self.profiles.get((partition, user_id))

    def put(self, partition: int, user_id: str, profile: Profile) -> None:
        profiles, key = self.profiles, (partition, user_id)
        if key in profiles:
            profiles.move_to_end(key)
        profiles[key] = profile
        while len(profiles) > self.max_cached:
            profiles.popitem(last=False)

    def drop(self, partition: int, user_id: str) -> None:
        self.profiles.pop((partition, user_id), None)

    def forget(self) -> None:
        self.profiles.clear()


class PartitionProfiles:
    """The engine's view of its partition of the profile table: ``get`` through the cache, then the profiles
    computed but not yet written (``unwritten``: a batch's profiles reach RocksDB only once its outputs and
    changelog records are in Kafka), then the table."""

    def __init__(self, table: PartitionTable, cache: ProfileCache, partition: int | None = None) -> None:
        self.table = table
        self.cache = cache
        self.partition = getattr(table, "partition", 0) if partition is None else partition
        self.unwritten: dict[bytes, tuple[int, bytes | None]] = {}  # key -> (batch number, value; None: deleted)

    def cached(self, user_id: str) -> Profile | None:
        return self.cache.get(self.partition, user_id)

    def get(self, user_id: str) -> Profile | None:
        profile = self.cache.get(self.partition, user_id)
        if profile is None:
            raw = self.stored(user_id)
            if raw is None:
                return None
            profile = decode_profile(raw)
        return profile

    def stored(self, user_id: str) -> bytes | None:
        """The latest bytes of a profile (one not in the cache): held until written, else the table's."""
        key = user_id.encode()
        held = self.unwritten.get(key)
        return held[1] if held is not None else self.table.get(key)

    def hold(self, writes: list[tuple[bytes, bytes | None]], batch: int) -> None:
        unwritten = self.unwritten
        for key, value in writes:
            unwritten[key] = (batch, value)

    def write(self, writes: list[tuple[bytes, bytes | None]], batch: int) -> None:
        """Write a batch's profiles to the table and stop holding those that no later batch changed again."""
        self.table.put_many(writes)
        unwritten = self.unwritten
        for key, _ in writes:
            held = unwritten.get(key)
            if held is not None and held[0] == batch:
                del unwritten[key]


@dataclass
class PartitionStores:
    """What a partition's engine reads and writes: its part of the state table, and the view of its part of the
    profile table (``view.table``)."""

    states: PartitionTable
    view: PartitionProfiles


EngineFactory = Callable[[int, "PartitionState | None", Any, float], Any]


@dataclass
class Outgoing:
    """One computed batch on its way out (``Pipeline._send_loop``)."""

    batch: int
    outputs: list[tuple[str, int | None, bytes, bytes]] = field(default_factory=list)
    changelog: list[tuple[str, int | None, bytes, bytes | None]] = field(default_factory=list)  # the profiles
    state_erasures: list[tuple[str, int | None, bytes, bytes | None]] = field(default_factory=list)  # the state's
    state_changelog: list[tuple[str, int | None, bytes, bytes | None]] = field(default_factory=list)  # and the rest
    tombstones: list[tuple[str, int | None, bytes, bytes | None]] = field(default_factory=list)  # after the state
    changelog_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # the profiles', once delivered
    writes: list[tuple[int, PartitionStores, list[tuple[bytes, bytes | None]], Any]] = field(default_factory=list)
    done: list[Any] = field(default_factory=list)
    deliveries: list[Any] = field(default_factory=list)  # of the step in progress (streams.producing.Delivery)


class Pipeline:
    """The engines of the partitions this worker owns, the inbox, and the batch loop around them."""

    def __init__(self, app: faust.App, settings: Settings, profiles: Any, states: Any,
                 outputs: dict[str, Any], engine_factory: EngineFactory | None = None) -> None:
        self.app = app
        self.settings = settings
        self.profiles = profiles
        self.states = states
        self.outputs = outputs
        from concurrent.futures import ThreadPoolExecutor

        from streams.model_slot import ChurnScorerSlot, LoaderThreads, RecommenderSlot

        # One thread runs the engines' steps (decoded events → outputs, scoring micro-batches), so the event
        # loop keeps fetching, heartbeating and serving HTTP while a batch is scored.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidewater-engine")
        # New model versions load in a thread of their own: in the engine's, a load of seconds (weights, a big
        # FAISS index) stopped batch processing for that long. A daemon thread: a stuck load must not hold the exit
        self.loader = LoaderThreads()
        self.churn_slot = ChurnScorerSlot(settings.registry_dir, micro_batch=settings.scoring_max_batch,
                                          threads=settings.model_threads)
        self.recs_slot = RecommenderSlot(settings.registry_dir, settings.rec_rerank_candidates)
        self.engine_factory = engine_factory or default_engine_factory(
            settings, lambda: self.churn_slot.scorer, lambda: self.recs_slot.recommender)
        self.engines: dict[int, Any] = {}
        self.handed_over: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset given to the engine
        self.delivered: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset put in the inbox
        self.lock = asyncio.Lock()
        self.cache = ProfileCache(settings.profile_cache_users)
        self.retired_counters: Counter[tuple[str, str]] = Counter()  # of engines dropped at revocations
        self.stores: dict[int, PartitionStores] = {}  # of the partitions that have an engine
        self.processed = 0
        self.throughput = AckTimes()  # GET /stats: when acks started and ended (benchmarks time the worker)
        self.dropped_at_rebalance = 0
        self.revocations = 0  # deliver() drops what it fetched before one
        self.live = LiveStats(settings)  # what GET /dashboard shows (streams/live_stats.py)
        self.inbox: list[Any] = []
        self.batch_max = settings.batch_max_events
        self.inline_min_events = settings.inline_min_events
        self.inline_max_scoring = settings.inline_max_scoring
        self.inbox_max = settings.batch_max_events * 4
        # records held in the engines' event-time merges: past this, the topic partitions they belong to (those
        # ahead in event time) are not fetched until the merges release some (``_hold_back``). Unbounded, a
        # source behind but delivering nothing (its leader gone) held back every record of the other one, none
        # acked, in memory while that one had a backlog (found by review). Such a source is declared idle only
        # after starved time, which accrues while the whole worker has no input: with a backlog on other
        # partitions its records stay held (and its partner topic unfetched) until that backlog is done
        self.held_max = self.inbox_max * 10
        self._holding_back = False  # past held_max, until the merges hold less than half of it
        self.wait_s = settings.batch_max_wait_ms / 1000.0
        self.idle_every_s = max(0.002, settings.source_idle_ms / 4000.0)  # idle sources released within 1/4
        self._sender: Any = None
        self.starved_s = 0.0
        self.profiles_changelog = profiles.changelog_topic.get_topic_name()
        self.states_changelog = states.changelog_topic.get_topic_name()
        self.ready = False  # models loaded, batch loop running (GET /health says "ok")
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        # the send tasks' one-batch queues (_send_loop): a few batches on their way out at most (bounded memory,
        # bounded unacked input)
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=1)
        self._changelog_queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=1)  # outputs sent
        self._store_queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=1)  # outputs in Kafka, changelog sent
        self._send_failed: BaseException | None = None
        self._batches = 0  # numbers the batches, for PartitionProfiles.unwritten
        # the last batch handed to the send stages (or being handed over: its put may wait for them), and the last
        # one they are done with: ``_drained`` waits for the second to reach the first
        self._handed_batch = 0
        self._finished_batch = 0
        self._batch_finished = asyncio.Condition()
        self._stopping = False  # set by ``stop``: the batch loop ends after the batch in progress
        self._abandoned = False  # a rebalance while stopping: the send stages send nothing more
        self._run_task: asyncio.Task | None = None
        self._all_partitions = list(range(settings.partitions))
        self._misrouted_logged: set[str] = set()
        self._loop_done = asyncio.Event()

    # --- input: whole fetched batches from the consumer's fetch loop (streams/ingress.py) ---------------
    async def deliver(self, tp: Any, records: list[Any]) -> None:
        """Take one fetched batch of one input partition (aiokafka ConsumerRecords). Waits while the inbox is
        full (backpressure: the fetch loop stops fetching) and while Faust holds the flow for a rebalance. Records
        fetched before a revocation that happened meanwhile are dropped: applied now, they would run ahead of the
        re-read of the records the revocation dropped from the inbox, whose offsets their profiles' markers would
        then skip (lost events)."""
        revocations = self.revocations
        await self.app.flow_control.acquire()
        while len(self.inbox) >= self.inbox_max:
            self._space.clear()
            await self._space.wait()
        if self.revocations != revocations:
            self.dropped_at_rebalance += len(records)
            return
        self.inbox.extend(records)
        if records:
            self.delivered[(tp.topic, tp.partition)] = records[-1].offset
            self._check_partitioner(tp, records[0])
        metrics.observe_many(metrics.FETCH_AGE, metrics.record_ages(records, time.time()))
        self._ready.set()  # the batch loop takes whatever is there: batches form while the last one runs

    def _check_partitioner(self, tp: Any, record: Any) -> None:
        """Is a record on the partition its key hashes to (murmur2)? A producer with another partitioner puts a
        user's clicks and purchases on different partitions (split profiles, profile requests routed elsewhere);
        the README asks for murmur2, and this says when a producer does not follow it: one record per fetched
        batch, counted, and logged once per topic."""
        key = record.key
        home = key_partition(key, self._all_partitions) if key else tp.partition
        if home == tp.partition:
            return
        metrics.MISROUTED.labels(tp.topic).inc()
        if tp.topic not in self._misrouted_logged:
            self._misrouted_logged.add(tp.topic)
            log.warning("%s[%d]@%d: key %r hashes to partition %d: its producer does not use Kafka's default "
                        "partitioner (murmur2; librdkafka: partitioner=murmur2_random), so a user's events may be "
                        "split between partitions (tidewater_misrouted_records_total)", tp.topic, tp.partition,
                        record.offset, key[:64], home)

    # --- the batch loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        self._run_task = asyncio.current_task()
        last_idle = last_poll = time.monotonic()
        await self.reload_models()
        log.info("froze the start-up heap for the garbage collector in %.2f s", freeze_heap())
        sending = asyncio.ensure_future(self._send_loop())
        self.ready = True
        try:
            await self._batch_loop(last_idle, last_poll)
            # stopping (``stop``, which cancels this at its deadline): what was computed reaches Kafka and is
            # acked before Faust commits and stops
            await self._drained()
            if self._send_failed is not None:  # a failed delivery is an error at a stop too (not swallowed)
                raise self._send_failed
        finally:
            sending.cancel()
            self._loop_done.set()

    def stop_budget_s(self) -> float:
        """How long a stop gives the batch loop to finish and send: half the rebalance timeout, then at most
        ENGINE_STEP_WAIT_S for the engine thread (the orchestrator's grace period must be longer: compose gives
        60 s against the default 30 + 5 s here)."""
        return self.settings.rebalance_timeout_s / 2

    async def stop(self) -> None:
        """Stop the batch loop before Faust stops the consumer and closes the tables (``create_app`` runs this
        first in the app's ``on_stop``): it finishes the batch in progress and sends what was computed, within
        ``stop_budget_s``. Faust closed RocksDB while a batch could still read or write it, and cancelled the
        loop only afterwards (found by a concurrency review). Past the budget the loop is cancelled and the engine
        thread's step awaited, so that nothing reads the tables as they close (the review of the change)."""
        if self._loop_done.is_set() or self._stopping:
            return
        budget = self.stop_budget_s()
        self._stopping = True
        self._ready.set()
        if not self.ready:  # still loading its models: the loop ends as soon as it would begin
            return
        try:
            await asyncio.wait_for(self._loop_done.wait(), timeout=budget)
            log.info("stopped the batch loop (%d records processed)", self.processed)
        except asyncio.TimeoutError:
            log.warning("stopping: the batch loop did not end within %.0f s: cancelled (the records not acked "
                        "are read again)", budget)
            if self._run_task is not None:
                self._run_task.cancel()
            try:  # the engine thread runs one step at a time: an empty call returns once the current one ends
                await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.executor, lambda: None),
                                       timeout=ENGINE_STEP_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("stopping: the engine thread's step is still running")

    def rebalance_started(self) -> None:
        """A rebalance while stopping: Faust then skips ``revoke`` (it leaves the group instead), so the partitions
        may already be another worker's, whose restore a changelog record sent now would overwrite. The batches
        not sent yet are dropped, neither sent, stored nor acked: their records are read again (review of the
        change)."""
        if self._stopping and not self._abandoned:
            self._abandoned = True
            log.warning("stopping: a rebalance started; the batches not sent yet are dropped (their records are "
                        "read again)")

    async def _batch_loop(self, last_idle: float, last_poll: float) -> None:
        while not self._stopping:
            if not self.inbox:
                started = time.monotonic()
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout=self.wait_s)
                except asyncio.TimeoutError:
                    pass
                # starved: Kafka had nothing for us during the wait
                self.starved_s += time.monotonic() - started
            await self._gather()
            self._ready.clear()
            if self._stopping:  # woken by ``stop``: no new batch (its records are read again)
                break
            if self.inbox:
                batch, self.inbox = self.inbox[: self.batch_max], self.inbox[self.batch_max:]
                self._space.set()
                await self.on_batch(batch, taken_at=self.revocations)
                self._hold_back()
            now = time.monotonic()
            if now - last_idle >= self.idle_every_s:
                last_idle = now
                await self.on_idle()
                self._hold_back()
                if self._send_failed is not None:  # with no input the next flush may never come: stop now
                    raise self._send_failed
            if now - last_poll >= self.settings.model_poll_s:
                last_poll = now
                self.churn_slot.poll(self.loader)
                self.recs_slot.poll(self.loader)
            await self._swap_loaded_models()

    async def _gather(self) -> None:
        """Let the batch grow while records are still being handed over (a backlog: big batches), and stop as
        soon as a turn of the event loop brings nothing new (live traffic: no added latency). Bounded by the
        batch size and by ``TIDEWATER_BATCH_MAX_WAIT_MS``."""
        deadline = time.monotonic() + self.wait_s
        while self.inbox and len(self.inbox) < self.batch_max and time.monotonic() < deadline:
            size = len(self.inbox)
            await asyncio.sleep(GATHER_STEP_S)
            if len(self.inbox) == size:
                return

    def held(self) -> int:
        """Records held in the partitions' event-time merges."""
        return sum(engine.pending() for engine in list(self.engines.values()))

    def _hold_back(self) -> None:
        """At the bound on held records, stop fetching the topic partitions whose records the merges hold (those
        ahead in event time); the others, which the merges wait for, go on. Below half the bound, fetch them all
        again (not at once below it: each batch would switch them back and forth)."""
        held = self.held()
        self._holding_back = held >= (self.held_max // 2 if self._holding_back else self.held_max)
        ahead: set[Any] = set()
        if self._holding_back:
            for partition, engine in list(self.engines.items()):
                topics = engine.sources_ahead() if hasattr(engine, "sources_ahead") else \
                    (self.settings.input_topics if engine.pending() else ())  # other engines (bench): all
                ahead.update(TP(topic, partition) for topic in topics)
        hold_back(self.app.consumer, self.settings.input_topics, ahead)

    def clock(self) -> float:
        """The engines' notion of "how long has a source been silent": time spent starved of input, not wall
        time. A worker that is busy (scoring, a slow disk, a loaded CPU) never declares a source idle just
        because it has not fetched for a while, so replays stay deterministic on a slow machine."""
        return self.starved_s

    def preload_models(self) -> None:
        """Start loading the registry's models before the worker starts (the imports and the weights take
        seconds; the group join and the table recovery run meanwhile)."""
        self.churn_slot.preload(self.loader)
        self.recs_slot.preload(self.loader)

    async def reload_models(self) -> None:
        """Load the registry's current models now (at start-up: the first batch is computed with them)."""
        churn = await self.churn_slot.maybe_reload(self.loader)
        recs = await self.recs_slot.maybe_reload(self.loader)
        if churn or recs:
            await self._hand_to_engines()

    async def _swap_loaded_models(self) -> None:
        """Swap in versions whose load has finished (``poll`` started them), between two batches."""
        churn = self.churn_slot.take_loaded()
        recs = self.recs_slot.take_loaded()
        if churn or recs:
            await self._hand_to_engines()

    async def _hand_to_engines(self) -> None:
        async with self.lock:  # between two batches: every output of a batch has one model version
            for engine in self.engines.values():
                engine.scorer = self.churn_slot.scorer
                engine.recommender = self.recs_slot.recommender
        if self.ready:  # a hot reload: free the old model, freeze the new one (one pause, at the swap)
            freeze_heap()

    async def _open_engines(self, partitions: list[int]) -> None:
        """Engines for newly assigned partitions, built in the engine thread: rebuilding a partition's inactivity
        index reads every profile stored in it (seconds for a million users), and on the event loop that would
        stop fetching, the web server and the group heartbeats, so a large partition got the worker thrown out
        of the group that had just assigned it."""
        now = self.clock()
        built = await asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: [self._build_engine(partition, now) for partition in partitions])
        for partition, (engine, stores) in zip(partitions, built):
            self.engines[partition], self.stores[partition] = engine, stores

    def _build_engine(self, partition: int, now: float) -> tuple[Any, PartitionStores]:
        """A partition's engine and stores from its tables (the state record, then the stored profiles)."""
        profiles, states = PartitionTable(self.profiles, partition), PartitionTable(self.states, partition)
        view = PartitionProfiles(profiles, self.cache)
        state, one_record = _restore_state(states, partition)
        engine = self.engine_factory(partition, state, view, now)
        if one_record and hasattr(engine, "mark_all_changed"):
            engine.mark_all_changed()  # the next write moves the counts, ranking and erasures to their own records
        if hasattr(engine, "index_profile"):
            self._rebuild_index(engine, profiles)
        return engine, PartitionStores(states, view)

    def _rebuild_index(self, engine: Any, profiles: PartitionTable) -> None:
        """The engine's inactivity index from its partition's stored profiles (after an assignment or a restart),
        reading only the fields it needs."""
        started = time.perf_counter()
        n = 0
        for raw in profiles.values():
            engine.index_profile(decode_activity(raw))
            n += 1
        if n:
            log.info("partition %d: rebuilt the activity index of %d users in %.2f s", engine.partition, n,
                     time.perf_counter() - started)

    async def on_batch(self, records: list[Any], taken_at: int | None = None) -> None:
        """``taken_at``: the revocation count when the batch left the inbox. A revocation that came in between
        (it waited for the lock while the previous batch ran) dropped the inbox but not this batch: applied now, it
        would reopen the revoked partitions' engines from tables without the last batches and run ahead of the
        re-read of what the revocation dropped (found by review). Such a batch is dropped too: re-read."""
        started = time.perf_counter()
        now = self.clock()
        async with self.lock:
            if taken_at is not None and taken_at != self.revocations:
                self.dropped_at_rebalance += len(records)
                return
            new = sorted({record.partition for record in records} - self.engines.keys())
            if new:
                # a partition (re)assigned: its engine starts from the tables, so they must hold every batch
                # computed before (a batch of an earlier assignment may still be on its way out)
                await self._drained()
                await self._open_engines(new)
            by_partition: dict[int, list[Any]] = {}
            handed_over = self.handed_over
            for record in records:
                partition = record.partition
                part = by_partition.get(partition)
                if part is None:
                    part = by_partition[partition] = []
                part.append(record)
                handed_over[(record.topic, partition)] = record.offset
            out = await self._flush(set(by_partition), now, by_partition)
        # outside the lock: the put waits while the send stages are busy (a slow Kafka: up to the producer's
        # timeout), and a revocation must not wait for it to take the lock (it then outlasted the rebalance timeout
        # and the group went on without this worker; found by review). The revocation's drain waits for it instead.
        await self._hand_over(out)
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def on_idle(self) -> None:
        """Release merges held back by a source that went quiet, and write the deletions a restore carried out."""
        out = None
        async with self.lock:
            new = self._owned_without_engine()
            if new:  # as in on_batch: the tables must hold every batch computed before
                await self._drained()
                await self._open_engines(new)
            waiting = {p for p, e in self.engines.items()
                       if e.pending() or (hasattr(e, "deletions_waiting") and e.deletions_waiting())}
            if waiting:
                out = await self._flush(waiting, self.clock())
        if out is not None:
            await self._hand_over(out)  # outside the lock, as in on_batch

    def _owned_without_engine(self) -> list[int]:
        """Input partitions assigned to this worker and restored (no rebalance or recovery going on) that have no
        engine: none of their records came since the assignment. The idle pass opens one for them, so that the
        stored profiles their restored state had deleted are deleted now (``PartitionEngine.deletions_waiting``).
        Engines were opened only by a partition's first record, so an idle partition kept such a profile, an erased
        user's included, and served it at GET /users/{id}/profile until its next event (found by review)."""
        app = self.app
        if self._stopping or getattr(app, "rebalancing", True) or getattr(app, "in_recovery", True):
            return []
        try:
            assigned = app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer yet, or one being rebuilt: nothing known to be owned
            return []
        topics = self.settings.input_topics
        return sorted({tp.partition for tp in assigned if tp.topic in topics} - self.engines.keys())

    def _apply(self, records: dict[int, list[Any]], now: float) -> None:
        for partition, part in records.items():
            engine = self.engines[partition]
            for record in part:
                engine.on_record(record, now)

    def _inline(self, records: dict[int, list[Any]] | None) -> bool:
        """Run the engines on the event loop thread instead of the executor? Yes for a big batch (a backlog)
        whose ticks score few users. Two threads that both need the GIL hand it over thousands of times per
        batch (every socket write, every numpy or FAISS call that releases it), and that costs more than the
        overlap of fetching and computing gains: measured 17-19k against 21-22k events/s on the pipeline bench.
        Small batches (live traffic) keep the executor, so fetching goes on while a batch is computed (lower
        latency), and so do ticks that score many users: the loop must not stop for seconds (heartbeats)."""
        if not records or sum(len(part) for part in records.values()) < self.inline_min_events:
            return False
        return sum(self.engines[p].scoring_bound() for p in records if hasattr(self.engines[p], "scoring_bound")) \
            <= self.inline_max_scoring

    def _step(self, partitions: list[int], now: float,
              status: dict[int, tuple[frozenset[str], frozenset[str]]]
              ) -> list[tuple[int, Any, list[tuple[bytes, bytes | None]],
                                                                  list[tuple[bytes, bytes | None]] | None]]:
        """The engines' part of a batch after ``_apply``, on the event loop (``_inline``) or in the executor
        thread; there in one hop per batch, not one per partition (each hop is a GIL hand-over between two
        busy threads, which showed up as latency)."""
        engines = [self.engines[partition] for partition in partitions]
        together = len(engines) > 1 and can_answer_together(engines)
        results = [engine.on_notify(now, *status[partition], defer_recs=True) if together
                   else engine.on_notify(now, *status[partition])  # other engines (bench) lack the keyword
                   for partition, engine in zip(partitions, engines)]
        if together:  # one recommender call for the batch's partitions, not one each
            answer_recs_together(engines, results)
        steps = []
        for partition, engine, result in zip(partitions, engines, results):
            writes: list[tuple[bytes, bytes | None]] = [
                (user_id.encode(), encode_profile(profile)) for user_id, profile in result.profiles.items()]
            writes.extend((user_id.encode(), None) for user_id in sorted(result.erased))  # changelog tombstones
            state = None
            if result.state_changed:
                items, ranking, erasures = [], False, []
                if hasattr(engine, "take_changed_items"):
                    items, ranking = engine.take_changed_items(), engine.take_ranking_changed()
                    erasures = engine.take_changed_erasures()
                state = _state_records(partition, engine.snapshot(), items, ranking, erasures)
            steps.append((partition, result, writes, state))
        return steps

    async def _flush(self, partitions: set[int], now: float,
                     records: dict[int, list[Any]] | None = None) -> "Outgoing":
        """Compute a batch (under the lock); the caller hands it to the send stages (``_hand_over``) once it has
        released the lock."""
        ordered = sorted(partitions)
        status = {partition: self.source_status(partition) for partition in ordered}
        if records:
            self._apply(records, now)  # decode + merge push: cheap, and tells whether a tick will score
        if self._inline(records):
            steps = self._step(ordered, now, status)
        else:
            steps = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._step, ordered, now, status)
        self._batches += 1
        out = Outgoing(self._batches)
        outputs, changelog = out.outputs, out.changelog
        for partition, result, writes, state in steps:
            engine = self.engines[partition]
            outputs.extend((emit.topic, None, emit.key, emit.value) for emit in result.outputs)
            stores = self.stores[partition]
            for user_id, profile in result.profiles.items():
                self.cache.put(partition, user_id, profile)
            for user_id in result.erased:
                self.cache.drop(partition, user_id)
            stores.view.hold(writes, out.batch)
            out.writes.append((partition, stores, writes, state))
            for key, value in writes:  # the tombstones once the state is in Kafka (``_send_loop``)
                (changelog if value is not None else out.tombstones).append(
                    (self.profiles_changelog, partition, key, value))
            if state is not None:  # the erasures apart: sent first (``_produce_changelog``)
                erased = _erased_prefix(partition)
                for key, value in state:
                    (out.state_erasures if key.startswith(erased) else out.state_changelog).append(
                        (self.states_changelog, partition, key, value))
            out.done.extend(result.done)
            engine.drain_metrics()
            metrics.WATERMARK.labels(str(partition)).set(engine.state.watermark)
        self.live.observe(outputs, processed=len(out.done), now=time.time())
        metrics.PENDING.set(self.held())  # every partition's
        if self._send_failed is not None:
            raise self._send_failed
        return out

    async def _hand_over(self, out: "Outgoing") -> None:
        # counted before the put (which may wait for room): a drain from now on waits for it. Callers come here
        # straight from the lock's release, with no await between, so a revocation cannot slip in before the count
        self._handed_batch = max(self._handed_batch, out.batch)
        await self._outbox.put(out)  # the next batch is computed while this one is sent

    async def _send_loop(self) -> None:
        """Make each batch durable, in batch order, while the next ones are computed:

        1. its outputs are produced;
        2. once Kafka has them, its changelog records, each part once Kafka has the one before: the profiles, the
           partition state (its changed erasures first, then the rest), the tombstones of the profiles deleted
           (erased, expired). So a state record in Kafka
           implies its batch's profiles are (a restore that finds profiles newer than the state re-applies the
           state's part of their events, ``PartitionEngine``), and a tombstone implies its state is (until the
           twenty-eighth session one could land without it: the restarted engine, without the user's history,
           rebuilt the user from the batch's events alone, re-sent their scores under the same ids with other values
           and could spend an offer twice). A crash before the tombstones leaves a deletion that the
           restored state holds, which the engine carries out at the restart (``PartitionEngine.index_profile``).
           The next batch's changelog waits for the tombstones too: its state may no longer tell their profiles
           apart (an erasure's guard that ended);
        3. once Kafka has those, its profiles and state go to the local RocksDB tables and its input records are
           acked (Faust commits acked offsets).

        So any stored profile, in RocksDB or in the changelog, implies that the outputs of the events it holds are
        in Kafka. A profile's offset marker makes a re-read event a duplicate: were the profile stored before its
        outputs were, a crash in between would lose those outputs for good (a restart skips their events). A
        delivery that fails stops the worker before its inputs are acked. The three steps are three tasks joined
        by one-batch queues, so the wait for one batch's delivery overlaps with the next batch's sending (the
        producer keeps each partition's records in order). Batches of partitions revoked meanwhile are not written
        locally (their changelog has them, for the next owner's restore), and Faust drops their acks: the next
        owner re-reads those records."""
        await asyncio.gather(self._stage(self._outbox, self._changelog_queue, self._produce_outputs),
                             self._stage(self._changelog_queue, self._store_queue, self._produce_changelog),
                             self._stage(self._store_queue, None, self._stored))

    async def _stage(self, inbox: asyncio.Queue, next_queue: asyncio.Queue | None, step: Callable) -> None:
        """Take batches in order, run ``step`` on each and pass it on. After a failure anywhere, batches are
        still taken and passed on but not sent, stored or acked, so that a batch loop waiting to put one sees
        the failure instead of hanging."""
        while True:
            out = await inbox.get()
            try:
                if self._send_failed is None and not self._abandoned:
                    await step(out)
            except Exception as exc:  # noqa: BLE001 - surfaced in the batch loop, which stops the worker
                log.exception("producing a batch failed")
                self._send_failed = exc
            finally:
                if next_queue is not None:
                    await next_queue.put(out)
                else:
                    await self._finished(out.batch)

    async def _finished(self, batch: int) -> None:
        async with self._batch_finished:
            self._finished_batch = max(self._finished_batch, batch)
            self._batch_finished.notify_all()

    async def _produce_outputs(self, out: "Outgoing") -> None:
        out.deliveries = await self.sender.send(out.outputs) if out.outputs else []

    async def _produce_changelog(self, out: "Outgoing") -> None:
        await delivered(out.deliveries)  # the outputs are in Kafka
        # each part once Kafka has the one before: sent together, one could be cut off by a crash while a later one
        # landed (separate requests, maybe to separate brokers). The state's erasures go before the rest of it: a
        # state record landed without its batch's erasures marked the request read, and the restart kept the erased
        # profile (found by review); erasures ahead of the state are carried out at the restart
        # (``PartitionEngine.index_profile``). The rest goes in one record batch per partition, which Kafka appends
        # whole, the state record last: item counts landed without it would be counted again at the re-read
        parts = [(records, whole) for records, whole in ((out.changelog, False), (out.state_erasures, False),
                                                         (out.state_changelog, True), (out.tombstones, False))
                 if records]
        for records, whole in parts[:-1]:
            out.changelog_offsets.update(await delivered(await self.sender.send(records, whole=whole)))
            if self._abandoned:  # stopping amid a rebalance: the rest is the next owner's (any prefix restores)
                out.deliveries = []
                return
        records, whole = parts[-1] if parts else ([], False)
        out.deliveries = await self.sender.send(records, whole=whole)
        if out.tombstones:  # the next batch's changelog once Kafka has them: its state, landed without them, may no
            # longer tell their profiles apart (``PartitionState.erase_positions``)
            out.changelog_offsets.update(await delivered(out.deliveries))

    async def _stored(self, out: "Outgoing") -> None:
        last = await delivered(out.deliveries)  # the changelog records are in Kafka
        self._write(out, {**out.changelog_offsets, **last})
        owned = {partition for partition, stores, _, _ in out.writes if self.stores.get(partition) is stores}
        # not the records of partitions revoked since: Faust forgot their acks at the revocation, and acked now
        # they would come back into its next commit, for partitions another worker owns (nor are they counted as
        # processed: the next owner processes them, and two workers' counts added up counted them twice)
        done = out.done if len(owned) == len(out.writes) else [r for r in out.done if r.partition in owned]
        self._ack(done)
        self.processed += len(done)
        if done:
            self.throughput.acked(len(done), time.time())

    async def _drained(self) -> None:
        """Every batch handed over so far is stored and acked (or dropped after a failure), one whose hand-over
        still waits for room in the outbox included (queue joins alone could return before such a batch was put)."""
        async with self._batch_finished:
            await self._batch_finished.wait_for(lambda: self._finished_batch >= self._handed_batch)

    def _write(self, out: "Outgoing", last: dict[tuple[str, int], int]) -> None:
        """A delivered batch's profiles and state into the partitions' RocksDB, and the changelog offset that
        the store now holds (Faust's recovery starts after it)."""
        for partition, stores, writes, state in out.writes:
            if self.stores.get(partition) is not stores:
                continue  # revoked since (and maybe assigned again, restored from the changelog meanwhile)
            stores.view.write(writes, out.batch)
            if state is not None:
                stores.states.put_many(state)
            for table, topic in ((self.profiles, self.profiles_changelog), (self.states, self.states_changelog)):
                offset = last.get((topic, partition))
                if offset is not None:
                    table.data.set_persisted_offset(TP(topic, partition), offset)
                mark_caught_up(table.data, partition)  # this worker writes the partition: its store is current

    def _ack(self, done: list[Any]) -> None:
        """Ack applied records per topic partition (in the order applied, which is offset order within one)."""
        by_tp: dict[tuple[str, int], list[int]] = {}
        for record in done:
            by_tp.setdefault((record.topic, record.partition), []).append(record.offset)
        consumer = self.app.consumer
        for (topic, partition), offsets in by_tp.items():
            ack_records(consumer, TP(topic, partition), offsets)
        metrics.observe_many(metrics.RECORD_AGE, metrics.record_ages(done, time.time()))
        metrics.RECORDS_DONE.inc(len(done))

    def source_status(self, partition: int) -> tuple[frozenset[str], frozenset[str]]:
        """(caught up, behind): the input topics of ``partition`` handed over up to the high watermark of the last
        fetch response (nothing earlier is waiting in Kafka, so the merge need not wait for them: live latency; in
        a replay the high watermark is the end of the input, so this holds only at its true end), and those with
        records in Kafka not handed over yet; a topic without a known high watermark is in neither."""
        consumer = self.app.consumer
        caught_up, behind = [], []
        for topic in self.settings.input_topics:
            tp = TP(topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not assigned / consumer being rebuilt: not known
                continue
            if highwater is None or highwater < 0:
                continue
            last = self.handed_over.get((topic, partition))
            seeked = False
            if last is None:
                # nothing handed over since the assignment (or the start): the group's committed offset says what
                # was processed before. Without it, a source fully committed and quiet since a restart was never
                # caught up, so the other topic's records of the partition waited in the merge for idle time that
                # a backlog never gives (found by review)
                committed = consumer._committed_offset.get(tp)
                last = committed - 1 if committed is not None else -1
                seeked = committed is not None and (topic, partition) not in self.delivered
            (caught_up if last >= highwater - 1 or self._through_markers(tp, last, highwater, seeked) else behind
             ).append(topic)
        return frozenset(caught_up), frozenset(behind)

    def committed_through_markers(self, tp: Any, committed: int, highwater: int) -> bool:
        """The group's ``committed`` offset is below the high watermark only by transaction markers: every record
        delivered was committed, and the fetch loop stepped over the rest (the consumer lag's test,
        streams/lag.py). Faust commits the offset after the last record it acked, never past a trailing marker."""
        seeked = (tp.topic, tp.partition) not in self.delivered
        return self._through_markers(tp, committed - 1, highwater, seeked)

    def _through_markers(self, tp: Any, last: int, highwater: int, seeked: bool = False) -> bool:
        """Caught up although ``last`` is below the high watermark: the offsets between are transaction markers,
        which no consumer receives. The fetch loop's last complete turn left aiokafka's position at or past the
        high watermark, everything it delivered was handed over (``last`` is its read offset then and now, so no
        seek came since), and none of it waits in the inbox. Without this, a topic written by a transactional
        producer was "behind" whenever it went quiet, and held the partition's other topic for
        TIDEWATER_SOURCE_IDLE_MS × 10 (10 s by default; found by review). ``seeked``: nothing delivered since the
        consumer was sought to the committed offset (``last`` + 1), where Faust leaves its read offset (the next
        to read, not the last read as after a record): a rebalance or a restart brought the hold back."""
        consumer = self.app.consumer
        through = getattr(consumer, "_tidewater_fetched_through", {}).get(tp)
        if through is None:
            return False
        read, position = through
        if read is None or read != consumer._read_offset.get(tp) or position < highwater:
            return False
        return read == last or (seeked and read == last + 1)

    @property
    def sender(self) -> Any:
        if self._sender is None:
            # at most Kafka's default message.max.bytes (1,048,588): Faust's producer_max_request_size, raised by
            # its environment variable past the broker's limit, would have every batch's state refused, again at
            # each restart (found by review); a larger state is split instead
            self._sender = BatchSender(self.app.producer, self.settings.partitions,
                                       whole_max_bytes=min(self.app.conf.producer_max_request_size, WHOLE_MAX_BYTES))
        return self._sender

    async def revoke(self, partitions: set[int]) -> None:
        """Forget everything not applied (the next owner re-reads it), and send what was computed before the
        group goes on: batches still in the send stages would otherwise write their changelog records after the
        next owner restored the partition, over its newer profiles (found by review). Their inputs are not acked
        (Faust already dropped the revoked partitions' acks): the next owner re-reads them, and its restored
        profiles skip them as duplicates. The lock is held only while a batch is computed, not while it waits to
        be handed to the send stages (``_hand_over``); the drain waits for such a batch too."""
        async with self.lock:
            self.revocations += 1
            self.dropped_at_rebalance += len(self.inbox)
            self.inbox = []
            self.cache.forget()  # another worker may own (and change) these users now
            self._space.set()
            for partition in partitions:
                engine = self.engines.pop(partition, None)
                try:
                    metrics.WATERMARK.remove(str(partition))  # its new owner reports it now
                except KeyError:
                    pass
                if engine is not None:
                    self.dropped_at_rebalance += engine.pending()
                    engine.drop_pending()
                    # /stats counts since the start: aiokafka revokes every partition at each rebalance, kept ones
                    # included, and the counters went back to 0 with their engines (found by a scale-out review)
                    self.retired_counters.update(getattr(engine, "counters", {}))
                self.stores.pop(partition, None)
                buffered = getattr(self.app.consumer, "_buffered_partitions", set())
                for topic in self.settings.input_topics:
                    self.handed_over.pop((topic, partition), None)
                    self.delivered.pop((topic, partition), None)
                    # held back (``_hold_back``): no longer, or the drain would still take a fetch of it
                    buffered.discard(TP(topic, partition))
            # set at each flush, and a worker left with no partition flushes no more: it kept the old count
            metrics.PENDING.set(self.held())
            # the stores are gone: the stages send these partitions' batches but neither store nor ack them
            try:
                await asyncio.wait_for(self._drained(), timeout=self.settings.rebalance_timeout_s / 2)
            except asyncio.TimeoutError:
                log.warning("revocation: batches still being sent after %.0f s; the group goes on",
                            self.settings.rebalance_timeout_s / 2)


async def _not_per_message(message: Any) -> None:
    raise RuntimeError(f"input record {message.tp}@{message.offset} reached the per-message path; input topics "
                       "are drained in batches by streams.ingress")


CRASH_EXIT_S = 60.0  # after the batch loop crashed, the process ends by then even if Faust's stop waits on Kafka


def exit_after_crash(seconds: float | None = None, exit: Callable[[int], None] = os._exit) -> threading.Timer:
    """End the process ``seconds`` after the batch loop crashed, should Faust's stop not have ended it: its last
    commit waits for Kafka, so a worker that crashed because Kafka was away stayed up, doing nothing, until Kafka
    came back (found by a failure-injection review; `/health` says "failed" meanwhile). Exit code 1; records not
    committed are read again. A daemon timer: a normal exit does not wait for it."""
    timer = threading.Timer(CRASH_EXIT_S if seconds is None else seconds, exit, args=(1,))
    timer.daemon = True
    timer.start()
    log.error("the batch loop crashed: the process ends within %.0f s", timer.interval)
    return timer


def default_engine_factory(settings: Settings, scorer: Callable[[], Any] = lambda: None,
                           recommender: Callable[[], Any] = lambda: None) -> EngineFactory:
    config = EngineConfig.from_settings(settings)

    def factory(partition: int, state: PartitionState | None, store: Any, now: float) -> PartitionEngine:
        return PartitionEngine(partition, config, store, state=state, scorer=scorer(), recommender=recommender(),
                               now=now, metrics=metrics.record_engine_metric, observe=metrics.observe_engine)

    return factory


# The partition-state table holds, per partition: the clock, budget and inactivity scan (``p{partition}``: a
# PartitionState without its counts, ranking and erasures), the popularity ranking (``p{partition}/ranking``,
# written when it is recomputed), one record per counted item (``p{partition}/item/{item_id}``: the count in
# ASCII) and one per recent erasure (``p{partition}/erased/{user_id}``: the request's event time, repr, and since the
# twenty-eighth session its position, "topic/partition offset": ``_erasure_value``). A batch writes the changed items
# and erasures (a tombstone for one dropped) and the ranking if it changed, then the state record. The worker sends
# the changed erasures first, and the rest once Kafka has them, in one record batch in that order, which Kafka appends
# whole (``Pipeline._produce_changelog``): a state record in Kafka implies its erasures and item counts are.
def _state_key(partition: int) -> bytes:
    return f"p{partition}".encode()


def _ranking_key(partition: int) -> bytes:
    return f"p{partition}/ranking".encode()


def _item_prefix(partition: int) -> bytes:
    return f"p{partition}/item/".encode()


def _erased_prefix(partition: int) -> bytes:
    return f"p{partition}/erased/".encode()


def _state_records(partition: int, state: Any, changed_items: list[tuple[str, int | None]],
                   ranking_changed: bool,
                   changed_erasures: list[tuple[str, float | None, tuple[str, int] | None]] = ()
                   ) -> list[tuple[bytes, bytes | None]]:
    """The records of a batch's state: the changed items and erasures, the ranking, then the state record itself,
    last (``Pipeline._produce_changelog`` relies on it)."""
    import msgspec

    prefix = _item_prefix(partition)
    records: list[tuple[bytes, bytes | None]] = [
        (prefix + item.encode(), None if count is None else str(count).encode()) for item, count in changed_items]
    # an erasure and its request's position in one record: written apart, a crash could land one without the
    # other, and the restart kept the erased profile (found by review)
    erased = _erased_prefix(partition)
    records += [(erased + user_id.encode(), _erasure_value(ts, at)) for user_id, ts, at in changed_erasures]
    if isinstance(state, PartitionState):
        if ranking_changed:
            records.append((_ranking_key(partition), msgspec.msgpack.encode([state.popular, state.popular_counts])))
        # in their own records
        state = msgspec.structs.replace(state, item_counts={}, popular=[], popular_counts=[], erased={},
                                        erase_positions={})
    records.append((_state_key(partition), msgspec.msgpack.encode(state)))
    return records


def _erasure_value(ts: float | None, at: tuple[str, int] | None) -> bytes | None:
    """``p{n}/erased/{user}``: the request's event time (repr; "-" once the guard is over) and, since the
    twenty-eighth session, its position ("topic/partition offset"); None (a tombstone) once both are forgotten."""
    if ts is None and at is None:
        return None
    when = "-" if ts is None else repr(ts)
    return (when if at is None else f"{when} {at[0]} {at[1]}").encode()


def _restore_state(states: PartitionTable, partition: int) -> tuple[PartitionState | None, bool]:
    """(the partition's state, whether it came in a format of before, to be written again in parts: counts and
    ranking inside the state record, or the recent erasures inside it)."""
    import msgspec

    raw = states.get(_state_key(partition))
    if raw is None:
        return None, False
    state = msgspec.msgpack.decode(raw, type=PartitionState)
    if state.item_counts or state.popular:
        return state, True
    ranking = states.get(_ranking_key(partition))
    if ranking is not None:
        state.popular, state.popular_counts = msgspec.msgpack.decode(ranking, type=tuple[list[str], list[int]])
    prefix = _item_prefix(partition)
    state.item_counts = {key[len(prefix):].decode(): int(value)
                         for key, value in states.items_with_prefix(prefix)}
    inside = bool(state.erased)  # written before the erasures had their own records
    prefix = _erased_prefix(partition)
    for key, value in states.items_with_prefix(prefix):
        user_id, (when, *at) = key[len(prefix):].decode(), value.decode().split(" ")
        if when != "-":
            state.erased[user_id] = float(when)
        if at:
            state.erase_positions[user_id] = (at[0], int(at[1]))
    return state, inside


def canonical_url(s: Settings) -> str:
    """How other workers reach this one. Faust keys the table's partition owners by it, so two workers announcing
    the same URL (http://0.0.0.0:6066 in every container) routed profile requests to the wrong one."""
    if s.web_canonical_url:
        return s.web_canonical_url
    host = socket.gethostname() if s.web_host in ("0.0.0.0", "::", "[::]", "") else url_host(s.web_host)
    return f"http://{host}:{s.web_port}"


def create_app(settings: Settings, *, engine_factory: EngineFactory | None = None) -> faust.App:
    s = settings
    app = faust.App(
        s.app_id,
        broker=[f"kafka://{hp.strip()}" for hp in s.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(s),
        store=s.store,
        datadir=s.data_dir,
        processing_guarantee="at_least_once",
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_s,
        broker_rebalance_timeout=max(s.rebalance_timeout_s, s.session_timeout_s),
        broker_heartbeat_interval=s.heartbeat_interval_s,
        broker_commit_interval=s.commit_interval_s,
        producer_max_batch_size=s.producer_max_batch_bytes,
        producer_request_timeout=s.producer_timeout_s,
        producer_linger=0.005,  # batch outputs and changelog records into few produce requests
        web_enabled=True,
        web_host=s.web_host,
        web_port=s.web_port,
        web_bind=s.web_host,
        # Faust's /table (any table's values: users' profiles) and /router (the cluster's URLs) views are not
        # served: profiles are read through GET /users/{id}/profile, behind TIDEWATER_READ_TOKEN (found by review)
        web_tables_enabled=False,
        web_router_enabled=False,
        canonical_url=canonical_url(s),
        table_standby_replicas=0,
    )
    configure_worker_consumer(s.fetch_max_wait_ms)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(*s.input_topics, partitions=s.partitions, **raw)
    outputs = {name: app.topic(name, partitions=s.partitions, **raw)
               for name in (*s.output_topics, s.topic_dead_letter)}
    # key_type/value_type bytes select Faust's "raw" codec for the store and the changelog
    # the changelogs' tombstone retention as `tidewater topics create` sets it, should Faust create them
    retention = {"delete.retention.ms": int(s.tombstone_retention_s * 1000)}
    profiles = app.Table(PROFILES_TABLE, partitions=s.partitions, key_type=bytes, value_type=bytes,
                         extra_topic_configs=retention)
    states = app.Table(STATE_TABLE, partitions=s.partitions, key_type=bytes, value_type=bytes,
                       extra_topic_configs=retention)
    for table in (profiles, states):  # a local store too old to have seen every deletion is restored in full
        guard_against_stale_partitions(table.data, s.tombstone_retention_s)

        async def recovered(store: Any = table.data) -> None:  # caught up with the changelog: say so
            mark_open_partitions_caught_up(store)

        table.on_recover(recovered)
    pipeline = Pipeline(app, s, profiles, states, outputs, engine_factory=engine_factory)
    for topic in s.input_topics:  # at 0 from the start: "nothing applied yet" is a series an alert can read
        metrics.EVENTS_IN.labels(topic)
        metrics.APPLIED.labels(topic)
        metrics.MISROUTED.labels(topic)
    app.tidewater = pipeline  # type: ignore[attr-defined]

    # Subscribe the input topics (co-partitioned: same partition count); their fetched batches go to the
    # pipeline's inbox instead of a stream (streams/ingress.py).
    conductor = app.topics
    conductor.add(inputs)
    build_default = conductor._build_handler

    def build_handler(tp: Any, channels: Any) -> Any:
        return _not_per_message if tp.topic in s.input_topics else build_default(tp, channels)

    conductor._build_handler = build_handler  # type: ignore[method-assign]
    install_batch_drain(app.consumer, s.input_topics, pipeline.deliver)

    @app.task
    async def batch_loop() -> None:
        # Faust/aiokafka log at debug level per produced record: keep them at INFO at most
        floor = max(logging.getLogger().getEffectiveLevel(), logging.INFO)
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(floor)
        try:
            await pipeline.run()
        except Exception:
            exit_after_crash()
            raise

    faust_on_stop = app.on_stop

    async def on_stop() -> None:  # the batch loop first: Faust then stops the consumer and closes the tables
        await pipeline.stop()
        await faust_on_stop()

    app.on_stop = on_stop  # type: ignore[method-assign]
    faust_rebalance_start = app.on_rebalance_start

    def on_rebalance_start() -> None:  # called by aiokafka's listener first thing, stopping or not
        pipeline.rebalance_started()
        faust_rebalance_start()

    app.on_rebalance_start = on_rebalance_start  # type: ignore[method-assign]

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: Any) -> None:
        await pipeline.revoke({tp.partition for tp in revoked if tp.topic in s.input_topics})

    from streams import broker_quirks, web

    broker_quirks.install(app, s)
    web.register(app, s, pipeline, profiles)
    return app
