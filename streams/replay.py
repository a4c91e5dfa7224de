"""`tidewater replay`: write events to the input topics; `tidewater record`: dump a topic to JSON lines;
`tidewater redrive`: dead letters back to their input topic."""
from __future__ import annotations

import asyncio
import heapq
import json
import time
from typing import TYPE_CHECKING, Iterable, Iterator

from tidewater.errors import UserError
from tidewater.events import Event, encode_event
from tidewater.settings import Settings
from tidewater.sources import dataset_events, topic_kind

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from tidewater.redrive import RedrivePlan


def merged_events(datasets: Iterable[str]) -> Iterator[Event | bytes]:
    """Several sources merged by event time (stable: ties keep the order of the --dataset flags)."""
    streams = [dataset_events(name) for name in datasets]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda e: e.ts if not isinstance(e, bytes) else float("-inf"))


async def replay(s: Settings, datasets: list[str], *, speed: float = 0.0, progress: bool = True,
                 limit: int | None = None) -> dict[str, int]:
    """Produce the events (keyed by user id) and return how many went to each topic."""
    from tqdm import tqdm

    try:
        events = merged_events(datasets)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    producer = await _started_producer(s)
    topics = {"click": s.topic_clicks, "purchase": s.topic_purchases}
    counts = {s.topic_clicks: 0, s.topic_purchases: 0}
    bar = tqdm(desc="replay", unit="ev", disable=not progress, mininterval=0.5, smoothing=0.1)
    first_ts = None
    started = time.monotonic()
    pending = []
    try:
        for n, item in enumerate(events):
            if limit is not None and n >= limit:
                break
            if isinstance(item, bytes):
                value, key = item, _key_of(item)
            else:
                value, key = encode_event(item), item.user_id.encode()
                if speed > 0:
                    first_ts = item.ts if first_ts is None else first_ts
                    wait = (item.ts - first_ts) / speed - (time.monotonic() - started)
                    if wait > 0:
                        await asyncio.sleep(wait)
            topic = topics[topic_kind(item)]
            pending.append(await producer.send(topic, value=value, key=key))
            counts[topic] += 1
            bar.update(1)
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        bar.close()
        await producer.stop()
    return counts


async def _started_producer(s: Settings) -> "AIOKafkaProducer":
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    from streams.kafka_config import aiokafka_kwargs

    producer = AIOKafkaProducer(**aiokafka_kwargs(s), linger_ms=5, max_batch_size=256 * 1024,
                                max_request_size=8 * 1024 * 1024)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()  # its half-started client, closed (else "Unclosed AIOKafkaProducer" on exit)
        raise UserError(f"cannot reach Kafka at {s.bootstrap_servers}: {exc}") from None
    return producer


async def redrive(s: Settings, letters: str, *, reasons: list[str] | None = None,
                  dry_run: bool = False) -> "RedrivePlan":
    """`tidewater redrive`: the dead letters of ``letters`` (a `tidewater record` dump of the dead-letter topic)
    whose record decodes under ``s`` go back to their input topic (``tidewater.redrive``); returns the plan."""
    from tidewater.engine import EngineConfig
    from tidewater.redrive import plan_redrive

    try:
        with open(letters, "rb") as fh:
            plan = plan_redrive(fh, input_topics=EngineConfig.from_settings(s).topic_types,
                                max_bytes=s.max_event_bytes, reasons=reasons, now=time.time(),
                                max_lead_s=s.max_event_lead_s)
    except OSError as exc:
        raise UserError(f"cannot read {letters}: {exc.strerror or exc}") from None
    if dry_run or not plan.records:
        return plan
    producer = await _started_producer(s)
    try:
        sent = [await producer.send(topic, value=value, key=key) for topic, key, value in plan.records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return plan


def _key_of(raw: bytes) -> bytes | None:
    try:
        user = json.loads(raw).get("user_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return str(user).encode() if user is not None else None


async def read_topic(s: Settings, topic: str, *, idle_s: float = 2.0, timeout_s: float = 120.0
                     ) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of a topic as (partition, offset, key, value), sorted by partition then offset.

    Reads until the end offsets are reached *and* nothing new arrived for ``idle_s`` (Tansu 0.6 reports a wrong
    high watermark after multi-record batches, so the end offsets alone are not trusted). A topic of any size is
    read whole; ``timeout_s`` without a record while the end is not reached is an error, never a short result."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaConnectionError

    from streams.kafka_config import aiokafka_kwargs

    consumer = AIOKafkaConsumer(**aiokafka_kwargs(s), enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise UserError(f"cannot reach Kafka at {s.bootstrap_servers}: {exc}") from None
    rows: list[tuple[int, int, bytes | None, bytes | None]] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise UserError(f"topic {topic!r} does not exist on {s.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        last_data = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=50000)
            if batch:
                last_data = time.monotonic()
                for tp, messages in batch.items():
                    rows.extend((tp.partition, m.offset, m.key, m.value) for m in messages)
                continue
            positions = [await consumer.position(tp) for tp in tps]
            reached = all(pos >= end[tp] for pos, tp in zip(positions, tps))
            if reached and time.monotonic() - last_data >= idle_s:
                break
            if not reached and time.monotonic() - last_data >= timeout_s:
                raise UserError(f"reading {topic!r}: no record for {timeout_s:g} s before its end offsets (read "
                                f"{len(rows):,} records): is the broker up?")
    finally:
        await consumer.stop()
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


async def record(s: Settings, topic: str, out: str, *, with_meta: bool = False, idle_s: float = 2.0) -> int:
    try:
        fh = open(out, "wb")  # before reading: a wrong path fails at once, not after the whole topic
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    with fh:
        rows = await read_topic(s, topic, idle_s=idle_s)
        for partition, offset, key, value in rows:
            if with_meta:
                line = json.dumps({"partition": partition, "offset": offset,
                                   "key": key.decode(errors="replace") if key else None,
                                   "value": (value or b"").decode(errors="replace")}).encode()
            else:
                line = (value or b"").replace(b"\n", b" ")
            fh.write(line + b"\n")
    return len(rows)
