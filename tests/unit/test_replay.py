"""`tidewater replay` without a broker (streams/replay.py): what it sends, in which order, to which partition and
with which timestamp, through a producer that records instead of sending. The round trip through a real broker
is in tests/integration/test_ingest.py."""
from __future__ import annotations

import asyncio
import json

import pytest

from streams import replay as replay_mod
from tidewater.errors import UserError
from tidewater.events import decode_event
from tidewater.settings import Settings


class _Cluster:
    def __init__(self, topics: frozenset[str] | None) -> None:
        self.listed = topics

    async def fetch_all_metadata(self):
        from types import SimpleNamespace

        class Everything:
            def __contains__(self, topic):
                return True

        return SimpleNamespace(topics=lambda: Everything() if self.listed is None else set(self.listed))


class RecordingProducer:
    """The part of AIOKafkaProducer that replay uses; ``sent`` keeps (topic, key, value, partition, timestamp)."""

    def __init__(self, partitions: int = 4, topics: frozenset[str] | None = None) -> None:
        self.sent: list[tuple] = []
        self.partitions = partitions
        self.client = _Cluster(topics)  # the topics it lists: every one, unless given

    async def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None):
        self.sent.append((topic, key, value, partition, timestamp_ms))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def partitions_for(self, topic):
        return set(range(self.partitions))

    async def flush(self):
        pass

    async def stop(self):
        pass


def run_replay(monkeypatch, files, **kwargs) -> RecordingProducer:
    producer = RecordingProducer()

    async def started(_settings, **_):
        return producer

    monkeypatch.setattr(replay_mod, "_started_producer", started)
    asyncio.run(replay_mod.replay(Settings(), [str(f) for f in files], progress=False, **kwargs))
    return producer


def click(event_id: str, user: str, ts: float) -> bytes:
    return json.dumps({"type": "click", "event_id": event_id, "user_id": user, "ts": ts}).encode()


def test_regression_a_line_with_a_lone_surrogate_does_not_stop_the_replay(tmp_path, monkeypatch):
    """``"\\ud800"`` is valid JSON but cannot be encoded as UTF-8: reading the line's key raised, and the replay
    stopped half-way with a traceback (found by review). The line goes out; the worker dead-letters it."""
    bad = b'{"type":"click","event_id":"e","user_id":"\\ud800","ts":1}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(click("a", "u1", 1.0) + b"\n" + bad + b"\n" + click("b", "u2", 2.0) + b"\n")
    sent = run_replay(monkeypatch, [path]).sent
    assert [value for _, _, value, _, _ in sent] == [click("a", "u1", 1.0), bad, click("b", "u2", 2.0)]
    assert decode_event(sent[1][2], max_bytes=1 << 16, key=sent[1][1], keyed=True).reason == "malformed_json"


def test_regression_lines_without_a_user_go_to_partition_0_not_a_random_one(tmp_path, monkeypatch):
    """A line without a readable user_id was sent with neither key nor partition, so the producer's partitioner
    picked one at random: two replays of one file put its dead letters (and the offsets after them) in different
    places (found by review)."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"not json\n[1, 2]\n" + json.dumps({"type": "click", "ts": 3}).encode() + b"\n"
                     + click("a", "u1", 4.0) + b"\n")
    sent = run_replay(monkeypatch, [path]).sent
    assert [(key, partition) for _, key, _, partition, _ in sent] == [(None, 0), (None, 0), (None, 0), (b"u1", None)]


def test_regression_recorded_envelopes_keep_their_kafka_timestamp(tmp_path, monkeypatch):
    """The worker judges an event's lead (``ts_in_future``) against its record's Kafka timestamp, and a replay
    re-stamped every record with the time of the replay: an event dead-lettered when first produced was applied
    when replayed (found by review). `record --with-meta` keeps the timestamp; `replay` sends it back."""
    lines = [replay_mod.envelope("clicks", 1, 7, b"u1", click("a", "u1", 5.0), 1_700_000_000_123),
             replay_mod.envelope("clicks", 2, 8, b"u2", click("b", "u2", 6.0))]  # a dump made before: no timestamp
    path = tmp_path / "dump.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sent = run_replay(monkeypatch, [path]).sent
    assert [(topic, key, partition, ts) for topic, key, _, partition, ts in sent] == [
        ("clicks", b"u1", 1, 1_700_000_000_123), ("clicks", b"u2", 2, None)]


def test_regression_a_dump_replayed_into_another_partition_count_goes_by_key(tmp_path, monkeypatch):
    """A `--with-meta` dump kept each record's partition wherever it still existed: replayed into a topic with more
    partitions, users landed where the workers' key routing does not look for them, and their later live events
    started second profiles (found by review). Envelopes now carry the topic's partition count; another count
    here sends by key. A dump made before keeps its partitions, as before."""
    lines = [replay_mod.envelope("clicks", 1, 7, b"u1", click("a", "u1", 5.0), None, 2),  # recorded over 2
             replay_mod.envelope("clicks", 1, 8, b"u2", click("b", "u2", 6.0), None, 4),  # over 4, as here
             replay_mod.envelope("clicks", 1, 9, b"u3", click("c", "u3", 7.0))]  # a dump made before: no count
    path = tmp_path / "dump.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sent = run_replay(monkeypatch, [path]).sent  # RecordingProducer: 4 partitions
    assert [(key, partition) for _, key, _, partition, _ in sent] == [(b"u1", None), (b"u2", 1), (b"u3", 1)]


def test_a_recorded_value_that_is_not_base64_is_refused_by_name():
    line = json.dumps({"topic": "clicks", "partition": 0, "offset": 3, "key": "u", "value_b64": "@@@"}).encode()
    with pytest.raises(UserError, match="clicks/0@3: value_b64 is not base64"):
        replay_mod.from_envelope(line)


def test_regression_several_files_are_merged_by_event_time(tmp_path, monkeypatch):
    """Lines of files were keyed -inf, so two files were sent one after the other, not interleaved by event time
    as the docstring said (found by review). A line without a time goes as soon as it is next in its file."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(click("a1", "u1", 100.0) + b"\nnot json\n" + click("a2", "u1", 300.0) + b"\n")
    envelope = replay_mod.envelope("clicks", 0, 0, b"u2", click("b2", "u2", 400.0))
    b.write_bytes(click("b1", "u2", 200.0) + b"\n" + json.dumps(envelope).encode() + b"\n")
    sent = run_replay(monkeypatch, [a, b]).sent
    order = [json.loads(value)["event_id"] if value != b"not json" else "bad" for _, _, value, _, _ in sent]
    assert order == ["a1", "bad", "b1", "a2", "b2"]


def test_regression_a_byte_order_mark_does_not_dead_letter_the_first_line(tmp_path):
    from tidewater.sources import jsonl_events

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + click("a", "u1", 1.0) + b"\n" + click("b", "u1", 2.0) + b"\n")
    lines = list(jsonl_events(path))
    assert lines == [click("a", "u1", 1.0), click("b", "u1", 2.0)]


def test_regression_speed_paces_file_lines_and_recorded_envelopes_too(tmp_path, monkeypatch):
    """`--speed N` paced only the built-in datasets: a .jsonl file or a `record --with-meta` dump went out as fast
    as it could, whatever N (found by review). Lines without a time (bad records) are sent without waiting."""
    waits: list[float] = []

    async def no_sleep(seconds):
        waits.append(seconds)

    monkeypatch.setattr(replay_mod.asyncio, "sleep", no_sleep)
    envelope = replay_mod.envelope("clicks", 0, 0, b"u2", click("c", "u2", 1_000.0 + 40))
    path = tmp_path / "in.jsonl"
    path.write_bytes(click("a", "u1", 1_000.0) + b"\nnot json\n" + click("b", "u1", 1_000.0 + 20) + b"\n"
                     + json.dumps(envelope).encode() + b"\n")
    sent = run_replay(monkeypatch, [path], speed=2.0).sent
    assert len(sent) == 4
    assert len(waits) == 2 and 9.0 < waits[0] <= 10.0 and 19.0 < waits[1] <= 20.0  # 20 s and 40 s at 2×


def test_regression_record_returns_on_a_topic_that_keeps_receiving_records(monkeypatch):
    """`record` waited for the end offsets *and* 2 s without a record: a topic written more often than that (live
    clicks, a busy dead-letter topic) was read without end and kept in memory (found by review). It now also
    stops ``idle_s`` after reaching the end offsets it started with."""
    from types import SimpleNamespace

    import aiokafka

    class LiveTopic:
        """One partition, end offset 3 when the read starts, a new record every 0.1 s from then on."""

        def __init__(self, **_):
            self.next, self.tps = 0, []

        async def start(self):
            pass

        async def stop(self):
            pass

        def partitions_for_topic(self, topic):
            return {0}

        def assign(self, tps):
            self.tps = tps

        async def seek_to_beginning(self, *tps):
            pass

        async def end_offsets(self, tps):
            return {tp: 3 for tp in tps}

        async def getmany(self, timeout_ms=0, max_records=0):
            await asyncio.sleep(0.1)
            record = SimpleNamespace(offset=self.next, key=b"u", value=b"{}", timestamp=0)
            self.next += 1
            return {self.tps[0]: [record]}

        async def position(self, tp):
            return self.next

        def last_stable_offset(self, tp):  # no transactions: the high watermark
            return self.next

        def highwater(self, tp):
            return self.next

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", LiveTopic)
    rows = asyncio.run(asyncio.wait_for(replay_mod.read_topic(Settings(), "clicks", idle_s=0.5), timeout=20))
    assert [r[1] for r in rows[:3]] == [0, 1, 2] and len(rows) < 50  # the start's end, and about idle_s more


def test_regression_a_failed_record_leaves_an_existing_dump_as_it_was(tmp_path, monkeypatch):
    """`record --out` opened the file for writing before connecting: a mistyped broker address emptied the user's
    earlier dump (found by review). The dump is written beside it and renamed over it once complete."""
    out = tmp_path / "dump.jsonl"
    out.write_bytes(b"earlier dump\n")

    async def unreachable(*_, **__):
        raise UserError("cannot reach Kafka at 127.0.0.1:1")

    monkeypatch.setattr(replay_mod, "each_record", unreachable)
    with pytest.raises(UserError):
        asyncio.run(replay_mod.record(Settings(), "clicks", str(out)))
    assert out.read_bytes() == b"earlier dump\n" and [p.name for p in tmp_path.iterdir()] == ["dump.jsonl"]

    monkeypatch.setattr(replay_mod, "each_record", records_read([(0, 0, b"u", b'{"a":1}', 5),
                                                                 (1, 0, b"v", b"line\nbreak", 6)]))
    assert asyncio.run(replay_mod.record(Settings(), "clicks", str(out))) == 2
    assert out.read_bytes() == b'{"a":1}\nline break\n' and [p.name for p in tmp_path.iterdir()] == ["dump.jsonl"]


def records_read(rows):
    """A stand-in for ``each_record`` that hands over ``rows`` (partition, offset, key, value, timestamp)."""
    from types import SimpleNamespace

    async def each_record(_settings, _topic, take, **_):
        for partition, offset, key, value, timestamp in rows:
            take(partition, SimpleNamespace(offset=offset, key=key, value=value, timestamp=timestamp))
        return len(rows)

    return each_record


def test_regression_record_writes_a_topic_sorted_by_partition_and_offset_without_holding_it(tmp_path, monkeypatch):
    """`record` kept every record of the topic in a list and sorted it before writing anything: a production
    topic ran it out of memory (found by review). Each partition's lines now go to a spool file as they come, and
    the dump is the spools in partition order: the same file, whatever the interleaving of the fetches."""
    interleaved = [(2, 0, b"c", b"c0", 1), (0, 0, b"a", b"a0", 1), (2, 1, b"c", b"c1", 2), (1, 0, b"b", b"b0", 1),
                   (0, 1, b"a", b"a1", 2)]
    out = tmp_path / "dump.jsonl"
    monkeypatch.setattr(replay_mod, "each_record", records_read(interleaved))
    assert asyncio.run(replay_mod.record(Settings(), "clicks", str(out), with_meta=True)) == 5
    assert [(e["partition"], e["offset"]) for e in map(json.loads, out.read_text().splitlines())] == \
        [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]
    assert [p.name for p in tmp_path.iterdir()] == ["dump.jsonl"]  # the spools are gone


def test_regression_replay_redrive_and_clock_wait_for_every_in_sync_replica(monkeypatch):
    """Their producer used aiokafka's default acks=1: a leader that failed right after acknowledging lost records
    the command had reported written, where the worker's own producer waits for all in-sync replicas (review)."""
    import aiokafka

    made: list[dict] = []

    class Producer:
        def __init__(self, **kwargs) -> None:
            made.append(kwargs)

        async def start(self) -> None:
            return None

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", Producer)
    asyncio.run(replay_mod._started_producer(Settings()))
    assert made[0]["acks"] == "all"


class RefusingProducer(RecordingProducer):
    """Kafka refuses the records whose value holds ``refused`` (as a broker answers MESSAGE_TOO_LARGE)."""

    def __init__(self, refused: bytes) -> None:
        super().__init__()
        self.refused = refused

    async def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None):
        from aiokafka.errors import MessageSizeTooLargeError

        done = asyncio.get_running_loop().create_future()
        if self.refused in (value or b""):
            done.set_exception(MessageSizeTooLargeError("the broker's message.max.bytes"))
        else:
            self.sent.append((topic, key, value, partition, timestamp_ms))
            done.set_result(None)
        return done


def test_regression_a_record_kafka_refuses_stops_the_replay_with_where_to_resume(tmp_path, monkeypatch):
    """A record the broker refused (over its 1 MB limit) ended the replay in a traceback, with no word of what
    was written or where to go on from (found by review). It now names the event, how many were written, and the
    --skip that resumes there; sends are pipelined, so it also says which records after it were written anyway
    (and would be written again by the resume)."""
    path = tmp_path / "events.jsonl"
    lines = [click(f"e{i}", f"u{i % 3}", 1.7e9 + i) for i in range(10)]
    lines.insert(3, json.dumps({"type": "clock", "ts": 1.7e9 + 2.5}).encode())  # goes out at the end, once
    path.write_bytes(b"\n".join(lines) + b"\n")
    producer = RefusingProducer(b'"e6"')
    monkeypatch.setattr(replay_mod, "_started_producer", lambda _s, **_: asyncio.sleep(0, producer))
    with pytest.raises(UserError, match=r"refused the record of event 8 \(MessageSizeTooLargeError.*9 records were"
                                        r" written.*--skip 7 to resume at that event; 3 records after it \(up to "
                                        r"event 11\) were written as well"):
        asyncio.run(replay_mod.replay(Settings(), [str(path)], progress=False))
    assert not any(b"clock" in v for _, _, v, _, _ in producer.sent)  # the run did not reach its end
    fixed = RecordingProducer()
    monkeypatch.setattr(replay_mod, "_started_producer", lambda _s, **_: asyncio.sleep(0, fixed))
    asyncio.run(replay_mod.replay(Settings(), [str(path)], progress=False, skip=7, limit=3))
    sent = [json.loads(v) for _, _, v, _, _ in fixed.sent]
    # --limit counts from the resume point; the skipped clock line still goes out, to every partition
    assert [e.get("event_id") for e in sent if e["type"] != "clock"] == ["e6", "e7", "e8"]
    assert [e["ts"] for e in sent if e["type"] == "clock"] == [1.7e9 + 2.5] * fixed.partitions


def test_a_redriven_record_kafka_refuses_is_named(tmp_path, monkeypatch):
    from tests.unit.test_redrive import dead_letters
    from tidewater.engine import Record

    letters = dead_letters([Record("clicks", 0, i, b"wrong", click(f"e{i}", "ann", 1.7e9 + i)) for i in range(4)],
                           max_bytes=1024)
    path = tmp_path / "letters.jsonl"
    path.write_bytes(b"\n".join(letters) + b"\n")
    producer = RefusingProducer(b'"e1"')
    monkeypatch.setattr(replay_mod, "_started_producer", lambda _s, **_: asyncio.sleep(0, producer))
    with pytest.raises(UserError, match=r"refused redriven record 2 .*3 records were written"):
        asyncio.run(replay_mod.redrive(Settings(), str(path)))


def test_regression_an_envelope_for_a_topic_that_does_not_exist_is_refused_before_any_metadata_by_name(
        tmp_path, monkeypatch):
    """A `record --with-meta` dump names each record's topic; asking its partitions by name (``partitions_for``)
    created a missing one (a typo in a dump edited by hand; found by the final review). Each topic is checked
    against the cluster's list before its first record; a dump of envelopes alone needs no clicks topic."""
    from streams.replay import envelope

    monkeypatch.setattr(replay_mod, "TOPIC_LISTING_WAIT_S", 0.0)
    path = tmp_path / "dump.jsonl"
    path.write_bytes(json.dumps(envelope("offers", 0, 5, b"u1", b'{"x": 1}', 1, 4)).encode() + b"\n")
    producer = RecordingProducer(topics=frozenset({"offers"}))
    monkeypatch.setattr(replay_mod, "_started_producer", lambda _s, **_: asyncio.sleep(0, producer))
    asyncio.run(replay_mod.replay(Settings(), [str(path)], progress=False))
    assert [sent[0] for sent in producer.sent] == ["offers"]
    path.write_bytes(json.dumps(envelope("ofers", 0, 5, b"u1", b'{"x": 1}', 1, 4)).encode() + b"\n")
    asked: list = []
    producer = RecordingProducer(topics=frozenset({"offers", "clicks", "purchases"}))
    producer.partitions_for = lambda topic: asked.append(topic)
    monkeypatch.setattr(replay_mod, "_started_producer", lambda _s, **_: asyncio.sleep(0, producer))
    with pytest.raises(UserError, match="topic 'ofers' does not exist"):
        asyncio.run(replay_mod.replay(Settings(), [str(path)], progress=False))
    assert asked == [] and producer.sent == []
