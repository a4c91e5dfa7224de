"""`tidewater replay`: write events to the input topics; `tidewater record`: dump a topic to JSON lines;
`tidewater redrive`: dead letters back to their input topic."""
from __future__ import annotations

import asyncio
import base64
import heapq
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

from tidewater.errors import UserError
from tidewater.events import Clock, Event, Rejected, decode_event, encode_event
from tidewater.settings import Settings
from tidewater.sources import dataset_events, topic_kind

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from tidewater.redrive import RedrivePlan


def merged_events(datasets: Iterable[str], check_lines: bool = True) -> Iterator[Event | bytes]:
    """Several sources merged by event time (stable: ties keep the order of the --dataset flags). A file's line
    goes by the time a worker will read from it (an envelope's by its value's); one without a time (a bad record,
    a clock line) goes as soon as it is next in its file."""
    streams = [dataset_events(name, check_lines) for name in datasets]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda e: e.ts if not isinstance(e, bytes) else _line_time(e))


def _line_time(line: bytes) -> float:
    recorded = from_envelope(line)
    return _event_time(recorded.value if recorded is not None else line, 1 << 62)


async def send_clock(producer: "AIOKafkaProducer", topic: str, ts: float) -> int:
    """A clock record (``tidewater.events.Clock``) at ``ts`` to every partition of ``topic``; how many."""
    value = encode_event(Clock(ts=ts))
    partitions = sorted(await producer.partitions_for(topic))
    await asyncio.gather(*[await producer.send(topic, value=value, partition=p) for p in partitions])
    return len(partitions)


def closing_time(last_ts: float, tick_s: float) -> float:
    """The clock that closes a replay: the first tick boundary after its last event, so the last tick fires."""
    from tidewater.clock import first_tick_after

    return first_tick_after(last_ts, tick_s)


class _Refused(Exception):
    """Kafka refused the record of event ``number`` (counting from 1 in the order read). ``written_after``: the
    numbers of later records that Kafka took all the same (sends are pipelined: other partitions, later batches)."""

    def __init__(self, number: int, cause: BaseException) -> None:
        super().__init__(number, cause)
        self.number, self.cause = number, cause
        self.written_after: list[int] = []


async def _send(producer: "AIOKafkaProducer", number: int, topic: str, **record: object) -> "asyncio.Future":
    from aiokafka.errors import KafkaError

    try:
        return await producer.send(topic, **record)  # type: ignore[arg-type]
    except KafkaError as exc:  # refused before it was sent (larger than the client's request limit, no metadata)
        raise _Refused(number, exc) from None


async def _settle(pending: list[tuple[int, "asyncio.Future"]]) -> tuple[int, _Refused | None]:
    """Wait for every send of ``pending`` (numbered records, emptied): how many Kafka acknowledged, and the first
    it refused (in the order read), if any."""
    results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
    refused = [_Refused(number, r) for (number, _), r in zip(pending, results) if isinstance(r, BaseException)]
    if refused:
        refused[0].written_after = [number for (number, _), r in zip(pending, results)
                                    if number > refused[0].number and not isinstance(r, BaseException)]
    pending.clear()
    return len(results) - len(refused), (refused[0] if refused else None)


async def _settle_after(pending: list[tuple[int, "asyncio.Future"]], refused: _Refused | None
                        ) -> tuple[int, _Refused | None]:
    """``_settle``, where ``refused`` (if any) was refused already: the first refused of them all."""
    acked, other = await _settle(pending)
    if other is not None and (refused is None or other.number < refused.number):
        refused = other
    return acked, refused


def _refused_error(refused: _Refused, written: int, what: str, resume: str) -> UserError:
    cause = refused.cause
    return UserError(f"Kafka refused {what} {refused.number} ({type(cause).__name__}: {cause}); {written} records "
                     f"were written before it stopped. Sending them again writes them at new offsets (the workers "
                     f"skip a user's repeated event among their last 16 event ids, not older ones): {resume}")


async def replay(s: Settings, datasets: list[str], *, speed: float = 0.0, progress: bool = True,
                 limit: int | None = None, close: bool = False, skip: int = 0,
                 check_lines: bool = True) -> dict[str, int]:
    """Produce the events (keyed by user id) and return how many went to each topic. Clock lines go to every
    partition of the clicks topic. ``close``: then a clock at the first tick after the last event, so the workers
    score the replay's last tick (a partition's clock only moves with its own records). ``skip``: leave out the
    first ``skip`` events (a replay that stopped on a refused record resumes there). ``check_lines`` False: a
    file none of whose first lines is a JSON object is sent too (``--as-is``). A record Kafka refuses stops
    the replay with a ``UserError`` naming it and what was written."""
    from tqdm import tqdm

    try:
        events = merged_events(datasets, check_lines)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    producer = await _started_producer(s)
    existing = ExistingTopics(producer, s)  # each topic checked before its first record (an envelope names its own)
    topics = {"click": s.topic_clicks, "purchase": s.topic_purchases}
    counts = {s.topic_clicks: 0, s.topic_purchases: 0}
    bar = tqdm(desc="replay", unit="ev", disable=not progress, mininterval=0.5, smoothing=0.1)
    first_ts = None
    last_ts = held_clock = -math.inf
    started = time.monotonic()
    pending: list[tuple[int, asyncio.Future]] = []
    written = 0
    try:
        for n, item in enumerate(events):
            if limit is not None and n >= skip + limit:
                break
            if n < skip:  # written by the run this resumes; its clock lines went out at its end, if it got there
                if isinstance(item, bytes) and _peek(item)[0] == "clock":
                    decoded = decode_event(item, max_bytes=s.max_event_bytes)
                    if isinstance(decoded, Clock):
                        held_clock = max(held_clock, decoded.ts)
                bar.update(1)
                continue
            partition = timestamp_ms = None
            event_ts = -math.inf  # the time a worker will read from it; -inf: none (a bad line), not paced
            recorded = from_envelope(item) if isinstance(item, bytes) else None
            if recorded is not None:  # `record --with-meta`: back to its topic, partition, key and timestamp
                topic, partition, key, value, timestamp_ms, recorded_partitions = recorded
                if topic not in existing.known:  # before partitions_for, which creates a topic it asks for
                    await existing.require(topic)
                here = len(await producer.partitions_for(topic))
                if partition is not None and (partition >= here or recorded_partitions not in (None, here)):
                    # another partition count here: by key, as the workers' routing and the live events of the
                    # same users go (the recorded partition alone went wherever it still existed; found by review)
                    partition = None
                if close or speed > 0:
                    event_ts = _event_time(value, s.max_event_bytes)
            elif isinstance(item, bytes):
                kind, key = _peek(item)
                wanted = close or speed > 0 or kind == "clock"
                decoded = decode_event(item, max_bytes=s.max_event_bytes) if wanted else None
                if isinstance(decoded, Clock):  # sent to every partition after the events (below)
                    held_clock = max(held_clock, decoded.ts)
                    bar.update(1)
                    continue
                if decoded is not None and not isinstance(decoded, Rejected):  # the worker will read its time
                    event_ts = decoded.ts
                value, topic = item, topics[topic_kind(item)]
            else:
                event_ts = item.ts
                value, key, topic = encode_event(item), item.user_id.encode(), topics[topic_kind(item)]
            last_ts = max(last_ts, event_ts)
            if speed > 0 and math.isfinite(event_ts):  # --speed: N× real time by event time, for every source
                first_ts = event_ts if first_ts is None else first_ts
                wait = (event_ts - first_ts) / speed - (time.monotonic() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
            if key is None and partition is None:  # no readable user: partition 0, not the partitioner's random pick
                partition = 0
            if topic not in existing.known:
                await existing.require(topic)
            pending.append((n + 1, await _send(producer, n + 1, topic, value=value, key=key, partition=partition,
                                               timestamp_ms=timestamp_ms)))
            counts[topic] = counts.get(topic, 0) + 1
            bar.update(1)
            if len(pending) >= 20000:
                acked, refused = await _settle(pending)
                written += acked
                if refused is not None:
                    raise refused
        acked, refused = await _settle(pending)
        written += acked
        if refused is not None:
            raise refused
        # clock lines of a file go out once, the latest, after its events: sent where they stood, a clock line
        # of one partition's dump (plain `record`) would run every other partition's time ahead of its events
        closing = closing_time(last_ts, s.clock_tick_s) if close and math.isfinite(last_ts) else -math.inf
        if max(held_clock, closing) > -math.inf:
            await existing.require(s.topic_clicks)
            counts[s.topic_clicks] += await send_clock(producer, s.topic_clicks, max(held_clock, closing))
        await producer.flush()
    except _Refused as first:
        acked, refused = await _settle_after(pending, first)  # the others in flight: the count is what Kafka has
        assert refused is not None
        # records after the refused one can have been written as well: the resume writes them again, and the
        # message says so
        after = refused.written_after
        resume = f"fix the cause, then add --skip {refused.number - 1} to resume at that event"
        if after:
            resume += (f"; {len(after)} records after it (up to event {max(after)}) were written as well, and the "
                       f"resume writes them again")
        raise _refused_error(refused, written + acked, "the record of event", resume) from None
    finally:
        bar.close()
        await producer.stop()
    return counts


TOPIC_LISTING_WAIT_S = 5.0  # a topic created a moment ago may not be listed yet (no leader, another broker)


class ExistingTopics:
    """The topics a command may write to: those the cluster lists. A broker that creates a topic on first use (the
    embedded ones do, and so does Apache Kafka's default) made a topic of a misspelt TIDEWATER_TOPIC_* name, or of
    one written to before `tidewater topics create`, with its own partition count (found by review). The list of
    every topic is asked for: metadata asked for one topic by name would create it."""

    def __init__(self, producer: "AIOKafkaProducer", s: Settings) -> None:
        self.producer, self.s, self.known = producer, s, set()

    async def require(self, *topics: str) -> None:
        from aiokafka.errors import KafkaError

        missing = [t for t in dict.fromkeys(topics) if t not in self.known]
        deadline = time.monotonic() + TOPIC_LISTING_WAIT_S
        while missing:
            try:
                listed = (await self.producer.client.fetch_all_metadata()).topics()
            except KafkaError as exc:
                raise UserError(f"cannot list the topics of {self.s.bootstrap_servers}: {exc}") from None
            self.known.update(t for t in missing if t in listed)
            missing = [t for t in missing if t not in self.known]
            if missing and time.monotonic() >= deadline:
                raise UserError(f"topic{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                                f"do{'' if len(missing) > 1 else 'es'} not exist on {self.s.bootstrap_servers}: "
                                "create the topics first (`tidewater topics create`), or check the TIDEWATER_TOPIC_* "
                                "settings")
            if missing:  # just created, and not listed yet: the metadata catches up within moments
                await asyncio.sleep(0.5)


async def _started_producer(s: Settings, *, topics: Iterable[str] = ()) -> "AIOKafkaProducer":
    """A started producer; ``topics`` must exist (:class:`ExistingTopics`)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    from streams.kafka_config import aiokafka_kwargs, unreachable

    # acks=all, as the worker's own producer: with the default (the leader alone) a leader that failed after
    # acknowledging lost replayed, redriven or clock records that the command had reported written (review)
    producer = AIOKafkaProducer(**aiokafka_kwargs(s), linger_ms=5, max_batch_size=256 * 1024,
                                max_request_size=8 * 1024 * 1024, acks="all")
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()  # its half-started client, closed (else "Unclosed AIOKafkaProducer" on exit)
        raise unreachable(s, exc) from None
    try:
        await ExistingTopics(producer, s).require(*topics)
    except BaseException:  # a missing topic, or Ctrl-C while listing: the producer is closed either way
        await producer.stop()
        raise
    return producer


async def redrive(s: Settings, letters: str, *, reasons: list[str] | None = None,
                  dry_run: bool = False) -> "RedrivePlan":
    """`tidewater redrive`: the dead letters of ``letters`` (a `tidewater record` dump of the dead-letter topic)
    whose record decodes under ``s`` go back to their input topic (``tidewater.redrive``); returns the plan."""
    from tidewater.engine import EngineConfig
    from tidewater.events import REJECT_REASONS
    from tidewater.redrive import plan_redrive

    unknown = sorted(set(reasons or ()) - set(REJECT_REASONS))
    if unknown:  # a typo selected no letter and said "0 records would be sent back" (found by review)
        raise UserError(f"unknown --reason {', '.join(unknown)}: the reasons are {', '.join(REJECT_REASONS)}")

    def unwrapped(lines: Iterable[bytes]) -> Iterator[bytes]:
        """The letters of a plain dump, or of one made with `record --with-meta` (each letter in an envelope; it
        was skipped as not a dead letter, found by review)."""
        for line in lines:
            recorded = from_envelope(line)
            yield line if recorded is None or recorded.value is None else recorded.value

    try:
        with open(letters, "rb") as fh:
            plan = plan_redrive(unwrapped(fh), input_topics=EngineConfig.from_settings(s).topic_types,
                                max_bytes=s.max_event_bytes, reasons=reasons, now=time.time(),
                                max_lead_s=s.max_event_lead_s)
    except OSError as exc:
        raise UserError(f"cannot read {letters}: {exc.strerror or exc}") from None
    if dry_run or not plan.records:
        return plan
    producer = await _started_producer(s, topics={topic for topic, _, _ in plan.records})
    pending: list[tuple[int, asyncio.Future]] = []
    try:
        refused: _Refused | None = None
        try:
            for number, (topic, key, value) in enumerate(plan.records, 1):
                pending.append((number, await _send(producer, number, topic, value=value, key=key)))
        except _Refused as before_sending:
            refused = before_sending
        acked, refused = await _settle_after(pending, refused)
        if refused is not None:
            raise _refused_error(refused, acked, "redriven record", "a redrive sends every selected letter "
                                 "again: fix the cause, or select fewer with --reason")
    finally:
        await producer.stop()
    return plan


def _event_time(value: bytes | None, max_bytes: int) -> float:
    """The event time a worker will read from ``value``: a valid user event's ``ts``, else -inf."""
    event = decode_event(value, max_bytes=max_bytes)
    return -math.inf if isinstance(event, (Rejected, Clock)) else event.ts


def _peek(raw: bytes) -> tuple[str | None, bytes | None]:
    """(type, key) of a JSON line as far as they can be read; a line that does not decode goes as it is (the
    worker dead-letters it), keyed by nothing."""
    try:
        data = json.loads(raw)
        user, kind = data.get("user_id"), data.get("type")
    except (ValueError, AttributeError, RecursionError):
        return None, None
    # surrogatepass: a lone surrogate escape ("\\ud800") is valid JSON but not UTF-8; the worker dead-letters the
    # line, the replay must not stop at it
    return (kind if isinstance(kind, str) else None), \
        (str(user).encode("utf-8", "surrogatepass") if user is not None else None)


async def read_topic(s: Settings, topic: str, *, idle_s: float = 2.0, timeout_s: float = 120.0,
                     with_timestamps: bool = False) -> list[tuple]:
    """Every record of a topic as (partition, offset, key, value), sorted by partition then offset; with
    ``with_timestamps``, (partition, offset, key, value, Kafka timestamp in ms). In memory: for tests and small
    topics (``record`` writes a topic of any size through ``each_record``)."""
    rows: list[tuple] = []
    width = 5 if with_timestamps else 4
    await each_record(s, topic, lambda p, m: rows.append((p, m.offset, m.key, m.value, m.timestamp)[:width]),
                      idle_s=idle_s, timeout_s=timeout_s)
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


async def each_record(s: Settings, topic: str, take: Callable[[int, Any], None], *, idle_s: float = 2.0,
                      timeout_s: float = 120.0, on_partitions: Callable[[int], None] | None = None) -> int:
    """Read a whole topic from its beginning, calling ``take(partition, message)`` for each record (each
    partition's in offset order, the partitions interleaved); how many. ``on_partitions``: called first with the
    topic's partition count.

    Reads until the end offsets are reached *and* nothing new arrived for ``idle_s`` (Tansu 0.6 reports a wrong
    high watermark after multi-record batches, so the end offsets alone are not trusted), or for ``idle_s`` past
    them on a topic that keeps receiving records. ``timeout_s`` without a record while the end is not reached is
    an error, never a short result."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaConnectionError

    from streams.broker_quirks import install_process_wide
    from streams.kafka_config import aiokafka_kwargs, unreachable

    install_process_wide(s.quirks)
    # read_committed, as the workers read: a dump for a replay must not bring back an aborted transaction's records
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(s), enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024, isolation_level="read_committed")
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise unreachable(s, exc) from None
    n = 0
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise UserError(f"topic {topic!r} does not exist on {s.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if on_partitions is not None:
            on_partitions(len(tps))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        last_data = time.monotonic()
        reached_at: float | None = None  # when the end offsets were first reached
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=50000)
            if batch:
                last_data = time.monotonic()
                for tp, messages in batch.items():
                    for message in messages:
                        take(tp.partition, message)
                    n += len(messages)
            now = time.monotonic()
            if reached_at is None:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps)):
                    reached_at = now
            # past the end offsets: done once quiet for idle_s, or idle_s after reaching them on a topic that
            # keeps receiving records (a live topic is never quiet: it was read without end).
            # Tansu's too-low high watermark hides at most each partition's last batch: read well within idle_s
            if reached_at is not None and (now - last_data >= idle_s or now - reached_at >= idle_s):
                break
            if reached_at is None and now - last_data >= timeout_s:
                raise UserError(f"reading {topic!r}: no record for {timeout_s:g} s before its end offsets (read "
                                f"{n:,} records): is the broker up?")
        warn_open_transactions(topic, {tp.partition: (consumer.last_stable_offset(tp), consumer.highwater(tp))
                                       for tp in tps})
    finally:
        await consumer.stop()
    return n


def warn_open_transactions(topic: str, ends: dict[int, tuple[int | None, int | None]]) -> list[int]:
    """Committed records only are read, up to each partition's last stable offset: records after a transaction
    that is still open (or whose producer died before ending it, until the broker aborts it) are not in the
    read. Say so rather than return a short dump in silence (found by review); the partitions held back."""
    held = sorted(p for p, (stable, high) in ends.items() if stable is not None and high is not None
                  and stable < high)
    if held:
        detail = ", ".join(f"{p} (from offset {ends[p][0]:,} of {ends[p][1]:,})" for p in held)
        log.warning("warning: %s: records after an open transaction are not in this read, partitions %s; read "
                    "again once it has ended (a producer that died mid-transaction is aborted by the broker after "
                    "its transaction.timeout.ms)", topic, detail)
    return held


def envelope(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             timestamp: int | None = None, partitions: int | None = None) -> dict:
    """One record as `record --with-meta` writes it: key and value as text when they are UTF-8, else base64
    (``key_b64`` / ``value_b64``), so that `replay` sends back exactly the bytes that were read; ``timestamp``:
    the record's Kafka timestamp (ms), sent back too (the worker judges an event's lead against it);
    ``partitions``: the topic's partition count then (a replay into another count goes by key)."""
    out: dict = {"topic": topic, "partition": partition, "offset": offset}
    if partitions is not None:
        out["partitions"] = partitions
    if timestamp is not None and timestamp >= 0:
        out["timestamp"] = timestamp
    for name, raw in (("key", key), ("value", value)):
        if raw is None:
            out[name] = None
            continue
        try:
            out[name] = raw.decode()
        except UnicodeDecodeError:
            out[f"{name}_b64"] = base64.b64encode(raw).decode()
    return out


class Recorded(NamedTuple):
    """A `record --with-meta` line: where the record was, and its bytes."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    timestamp: int | None  # ms; None in dumps made before it was recorded (the producer stamps it)
    partitions: int | None  # the topic's partition count when recorded; None in dumps made before


def from_envelope(line: bytes) -> Recorded | None:
    """The record of a `record --with-meta` line; None for any other line (an event)."""
    if not line.startswith(b"{") or b'"offset"' not in line:
        return None
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("topic"), str) or "offset" not in data \
            or not ({"value", "value_b64"} & data.keys()) or "reason" in data:
        return None  # "reason": a dead letter (dead_letter.v1), which goes back through `redrive` only

    def raw(name: str) -> bytes | None:
        if data.get(f"{name}_b64") is not None:
            try:
                return base64.b64decode(data[f"{name}_b64"], validate=True)
            except (ValueError, TypeError):  # binascii.Error is a ValueError
                raise UserError(f"recorded record {data['topic']}/{data.get('partition')}@{data.get('offset')}: "
                                f"{name}_b64 is not base64") from None
        text = data.get(name)
        return None if text is None else str(text).encode("utf-8", "surrogatepass")

    def count(name: str, least: int) -> int | None:
        value = data.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= least else None

    partition = data.get("partition")
    return Recorded(data["topic"], partition if isinstance(partition, int) else None, raw("key"), raw("value"),
                    count("timestamp", 0), count("partitions", 1))


async def record(s: Settings, topic: str, out: str, *, with_meta: bool = False, idle_s: float = 2.0) -> int:
    """Dump ``topic`` to ``out``. Written to a temporary file beside it and renamed over it once complete: an
    existing dump is not emptied by a read that fails (a mistyped broker or topic), and never half-written."""
    import os
    import shutil
    import tempfile

    target = os.path.abspath(out)
    if os.path.isdir(target):  # found at the rename only, after the whole topic was read (review)
        raise UserError(f"cannot write {out}: it is a directory; name a file in it")
    try:  # before reading: a wrong path fails at once, not after the whole topic
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target))
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    # each partition's lines spooled to a temporary file as they come, then the files one after the other in
    # partition order: the dump is sorted by partition and offset, and the topic is never held in memory (it was,
    # whole, until the twenty-first session: a production topic ran the command out of memory; found by review)
    spools: dict[int, Any] = {}
    count: list[int] = []  # the topic's partitions, stamped on each envelope

    def take(partition: int, m: Any) -> None:
        if with_meta:
            line = json.dumps(envelope(topic, partition, m.offset, m.key, m.value, m.timestamp,
                                       count[0] if count else None)).encode()
        else:
            line = (m.value or b"").replace(b"\n", b" ")
        spool = spools.get(partition)
        if spool is None:
            spool = spools[partition] = tempfile.TemporaryFile(dir=os.path.dirname(target))
        spool.write(line + b"\n")

    try:
        with os.fdopen(fd, "wb") as fh:
            n = await each_record(s, topic, take, idle_s=idle_s, on_partitions=count.append)
            for partition in sorted(spools):
                spool = spools[partition]
                spool.seek(0)
                shutil.copyfileobj(spool, fh, 1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp's 0600: as a plain open() would have made it
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        for spool in spools.values():
            spool.close()
    return n
