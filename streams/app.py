"""The Faust app: topics → the batching agent → profile table → engine → output topics.

Faust owns the consumer group, offsets, acks, tables, changelogs, recovery and the web server. The agent takes
batches of raw records (no per-event Faust decoding), hands them to one pure ``PartitionEngine`` per input
partition, writes each changed profile once per batch, sends the outputs, and only then acks the records.
Records held in the event-time merge are not acked until they are applied (their message is incref'ed), so
a crash or a rebalance re-delivers them.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import faust
from faust.streams import _current_event

from streams import metrics
from streams.kafka_config import faust_credentials
from tidewater.engine import EngineConfig, PartitionEngine, PartitionState, Record
from tidewater.profile import Profile, decode_profile, encode_profile
from tidewater.settings import Settings

log = logging.getLogger("tidewater.worker")

PROFILES_TABLE = "profiles"
STATE_TABLE = "partition-state"


@contextmanager
def partition_context(event: Any) -> Iterator[None]:
    """Table writes go to the store and changelog partition of Faust's *current event*. A batch spans
    partitions, so each partition's writes run with one of that partition's own events as the current one."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class TableProfileStore:
    """The engine's view of the profile table (reads inside the partition's context)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, user_id: str) -> Profile | None:
        raw = self.table.get(user_id.encode())
        return None if raw is None else decode_profile(raw)


class Pipeline:
    """Holds the engines of the partitions this worker owns and moves batches through them."""

    def __init__(self, app: faust.App, settings: Settings, profiles: Any, states: Any,
                 outputs: dict[str, Any], scorer: Any = None) -> None:
        self.app = app
        self.settings = settings
        self.config = EngineConfig.from_settings(settings)
        self.profiles = profiles
        self.states = states
        self.outputs = outputs
        self.scorer = scorer
        self.engines: dict[int, PartitionEngine] = {}
        self.last_event: dict[int, Any] = {}
        self.lock = asyncio.Lock()
        self.store = TableProfileStore(profiles)
        self.processed = 0
        # Rebalance fencing: each event is tagged with the assignment epoch in which Faust delivered it.
        self.epoch = 0
        self.epoch_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.stale_dropped = 0

    def tag(self, event: Any) -> None:
        self.epoch_of[event.message] = self.epoch

    def engine(self, partition: int, event: Any) -> PartitionEngine:
        engine = self.engines.get(partition)
        if engine is None:
            with partition_context(event):
                raw = self.states.get(f"p{partition}".encode())
            state = PartitionState(partition=partition) if raw is None else _decode_state(raw)
            engine = PartitionEngine(partition, self.config, self.store, state=state, scorer=self.scorer,
                                     now=time.monotonic(), metrics=metrics.record_engine_metric)
            self._rebuild_index(engine)
            self.engines[partition] = engine
        return engine

    def _rebuild_index(self, engine: PartitionEngine) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        partitioner = DefaultPartitioner()
        all_partitions = list(range(self.settings.partitions))
        n = 0
        for key, raw in self.profiles.items():
            if partitioner(key, all_partitions, all_partitions) == engine.partition:
                engine.index_profile(decode_profile(raw))
                n += 1
        if n:
            log.info("partition %d: rebuilt the activity index of %d users", engine.partition, n)

    async def on_batch(self, events: list[Any]) -> None:
        started = time.perf_counter()
        now = time.monotonic()
        async with self.lock:
            touched: set[int] = set()
            for event in events:
                message = event.message
                message.incref()  # held until the engine has applied it (see module doc)
                if self.epoch_of.get(message, self.epoch) != self.epoch:
                    # Delivered before the last rebalance (still in take()'s buffer): Faust has seeked back to
                    # the committed offset and delivers it again in order. Applying it now would move the
                    # idempotency marker past records not yet re-read, which would then be skipped as
                    # duplicates. Never acked either, so the commit cannot jump over the re-read.
                    self.stale_dropped += 1
                    continue
                engine = self.engine(message.partition, event)
                self.last_event[message.partition] = event
                engine.on_record(Record(message.topic, message.partition, message.offset, message.key,
                                        message.value, handle=event), now)
                touched.add(message.partition)
            await self._flush(touched, now)
        metrics.BATCH_SIZE.observe(len(events))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def on_idle(self) -> None:
        """Periodic: release merges held back by a source that went quiet. During a rebalance everything held
        is released at once: Faust waits for every started message to be acked before it hands partitions
        over (determinism yields to liveness here, and only for events that were waiting on a lagging source)."""
        async with self.lock:
            waiting = {p for p, e in self.engines.items() if e.pending()}
            if waiting:
                now = float("inf") if self.app.rebalancing else time.monotonic()
                await self._flush(waiting, now)

    async def _flush(self, partitions: set[int], now: float) -> None:
        pending = 0
        for partition in sorted(partitions):
            engine = self.engines[partition]
            result = engine.on_notify(now)
            for emit in result.outputs:
                await self.outputs[emit.topic].send(key=emit.key, value=emit.value)
            with partition_context(self.last_event[partition]):
                for user_id, profile in result.profiles.items():
                    await self._write(self.profiles, user_id.encode(), encode_profile(profile), partition)
                if result.state_changed:
                    await self._write(self.states, f"p{partition}".encode(), _encode_state(engine.snapshot()),
                                      partition)
            for event in result.done:
                event.ack()
            self.processed += len(result.done)
            pending += engine.pending()
            metrics.WATERMARK.labels(str(partition)).set(engine.state.watermark)
        metrics.PENDING.set(pending)

    @staticmethod
    async def _write(table: Any, key: bytes, value: bytes, partition: int) -> None:
        """Store write plus changelog record, like ``table[key] = value`` but awaiting the producer's queue
        instead of Faust's unbounded send_soon buffer (which stalls under one write per user per batch)."""
        table.data[key] = value
        await table.changelog_topic.send(key=key, value=value, partition=partition,
                                         callback=table._on_changelog_sent)

    async def revoke(self, partitions: set[int]) -> None:
        async with self.lock:
            self.epoch += 1
            self._drop(partitions)

    def _drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            engine = self.engines.pop(partition, None)
            if engine is not None:
                engine.drop_pending()
            self.last_event.pop(partition, None)


def _encode_state(state: PartitionState) -> bytes:
    import msgspec

    return msgspec.msgpack.encode(state)


def _decode_state(raw: bytes) -> PartitionState:
    import msgspec

    return msgspec.msgpack.decode(raw, type=PartitionState)


def create_app(settings: Settings, *, scorer: Any = None) -> faust.App:
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
        broker_rebalance_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_interval_s,
        broker_commit_interval=s.commit_interval_s,
        producer_max_batch_size=s.producer_max_batch_bytes,
        producer_linger=0.005,  # batch outputs and changelog records into few produce requests
        web_enabled=True,
        web_host=s.web_host,
        web_port=s.web_port,
        web_bind=s.web_host,
        stream_buffer_maxsize=max(4096, s.batch_max_events * 2),
        table_standby_replicas=0,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(*s.input_topics, partitions=s.partitions, **raw)
    outputs = {name: app.topic(name, partitions=s.partitions, **raw)
               for name in (*s.output_topics, s.topic_dead_letter)}
    # key_type/value_type bytes select Faust's "raw" codec for the store and the changelog
    profiles = app.Table(PROFILES_TABLE, partitions=s.partitions, key_type=bytes, value_type=bytes)
    states = app.Table(STATE_TABLE, partitions=s.partitions, key_type=bytes, value_type=bytes)
    pipeline = Pipeline(app, s, profiles, states, outputs, scorer=scorer)
    app.tidewater = pipeline  # type: ignore[attr-defined]

    @app.agent(inputs, name="tidewater-process")
    async def process(stream: faust.StreamT) -> None:
        def tag(value: Any) -> Any:  # runs as each event leaves the channel, before take() buffers it
            pipeline.tag(stream.current_event)
            return value

        stream.add_processor(tag)
        async for events in stream.take_events(s.batch_max_events, within=s.batch_max_wait_ms / 1000.0):
            await pipeline.on_batch(list(events))

    @app.timer(max(0.05, s.source_idle_ms / 4000.0))
    async def release_idle() -> None:
        await pipeline.on_idle()

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set, **kwargs: Any) -> None:
        await pipeline.revoke({tp.partition for tp in revoked if tp.topic in s.input_topics})

    from streams import web

    web.register(app, s, pipeline, profiles)
    return app
