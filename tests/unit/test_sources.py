"""Recorded event files and datasets as `tidewater replay` reads them (tidewater/sources.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tidewater.sources import dataset_events


def test_regression_a_missing_file_is_reported_before_anything_is_sent(tmp_path):
    """The file was opened lazily, once the producer was running, so a typo gave a FileNotFoundError traceback
    (found by review)."""
    with pytest.raises(ValueError, match="no such file"):
        dataset_events(str(tmp_path / "missing.jsonl"))
    done = subprocess.run([sys.executable, "-m", "tidewater.cli", "replay", "--dataset", str(tmp_path / "x.jsonl"),
                           "--bootstrap-servers", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "error: no such file" in done.stderr and "Traceback" not in done.stderr


def test_a_recorded_file_is_replayed_line_for_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  {"b": 2}  \n')
    assert list(dataset_events(str(path))) == [b'{"a": 1}', b'{"b": 2}']  # blank lines skipped, bytes kept


def test_record_to_an_unwritable_path_fails_before_reading_the_topic(tmp_path):
    import asyncio

    from streams.replay import record
    from tidewater.errors import UserError
    from tidewater.settings import Settings

    with pytest.raises(UserError, match="cannot write"):  # no broker at this address: nothing was read
        asyncio.run(record(Settings(bootstrap_servers="127.0.0.1:1"), "dead-letter", str(tmp_path / "no" / "x.jsonl")))


@pytest.mark.parametrize("content", [
    b"user_id,ts,amount\n00179,2023-01-01,163.38\n",  # a CSV purchase log
    b'{\n  "type": "click",\n  "user_id": "u1",\n  "ts": 1\n}\n',  # pretty-printed JSON
    b'[{"type": "click", "user_id": "u1", "ts": 1}, {"type": "click", "user_id": "u2", "ts": 2}]\n',  # a JSON array
])
def test_regression_a_file_that_is_not_json_lines_is_refused_before_anything_is_sent(tmp_path, content):
    """Any file was sent line by line and counted as events written ("clicks: 3 events written"), then every line
    was dead-lettered by the workers (found by review)."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not JSON lines: none of its first"):
        dataset_events(str(path))


def test_a_bad_line_among_json_lines_still_goes_to_the_workers_dead_letters(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{this is not json\n{"type": "click", "user_id": "u1", "ts": 1}\n\n')
    assert list(dataset_events(str(path))) == [b"{this is not json", b'{"type": "click", "user_id": "u1", "ts": 1}']
    path.write_bytes(b"")  # an empty file is no events, not an error
    assert list(dataset_events(str(path))) == []


@pytest.mark.parametrize("ts, message", [("2099-01-01T00:00:00Z", "s ahead of this machine's clock"),
                                         ("nan", "not a time")])
def test_regression_clock_refuses_a_time_the_workers_would_dead_letter(ts, message):
    """`tidewater clock --ts 2099-...` said "written to 4 partitions", and the workers dead-lettered it
    (ts_in_future); `--ts nan` answered "JSON is malformed: invalid character (byte 24)" (found by review)."""
    from typer.testing import CliRunner

    from tidewater.cli import app
    from tidewater.errors import UserError

    done = CliRunner().invoke(app, ["clock", "--ts", ts, "--bootstrap-servers", "127.0.0.1:1"])
    assert isinstance(done.exception, UserError) and message in str(done.exception)


def test_regression_record_to_a_directory_fails_before_reading_the_topic(tmp_path):
    """It failed with an IsADirectoryError traceback at the rename, after reading the whole topic (review)."""
    import asyncio

    from streams.replay import record
    from tidewater.errors import UserError
    from tidewater.settings import Settings

    with pytest.raises(UserError, match="it is a directory"):  # no broker at this address: nothing was read
        asyncio.run(record(Settings(bootstrap_servers="127.0.0.1:1"), "dead-letter", str(tmp_path)))


def test_regression_kafka_out_of_reach_says_what_to_check(tmp_path):
    """aiokafka's message names the address and often no cause ('Unable connect to "...": '); a port that never
    answers or a TLS listener spoken to in plaintext gave no hint (found by review)."""
    import asyncio

    from streams.replay import replay
    from tidewater.errors import UserError
    from tidewater.settings import Settings

    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "click", "event_id": "e1", "user_id": "u1", "ts": 1600000000}\n')
    with pytest.raises(UserError, match=r"cannot reach Kafka at 127\.0\.0\.1:1: .+ \(check the address and port, "
                                        r"and that TIDEWATER_SECURITY_PROTOCOL, PLAINTEXT, is what that listener"):
        asyncio.run(replay(Settings(bootstrap_servers="127.0.0.1:1"), [str(events)], progress=False))


def test_a_clock_ahead_is_not_refused_when_the_lead_check_is_off(monkeypatch):
    """TIDEWATER_MAX_EVENT_LEAD_S=0 turns the workers' check off; the command's check followed it only once the
    final review pointed it out (it refused any time ahead)."""
    import time

    from typer.testing import CliRunner

    from tidewater.cli import app
    from tidewater.errors import UserError

    monkeypatch.setenv("TIDEWATER_MAX_EVENT_LEAD_S", "0")
    done = CliRunner().invoke(app, ["clock", "--ts", str(int(time.time()) + 3600), "--bootstrap-servers",
                                    "127.0.0.1:1"])
    assert isinstance(done.exception, UserError) and "cannot reach Kafka" in str(done.exception)  # it got that far


def test_a_file_of_only_bad_lines_goes_as_is_when_asked(tmp_path):
    """A file made to test the dead-letter path may hold no valid line at all: ``--as-is`` (check_lines False)
    sends it, byte for byte (it was refused with no way around; found by review)."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{truncated\nnot json at all\n[1, 2]\n")
    with pytest.raises(ValueError, match="--as-is sends the lines anyway"):
        dataset_events(str(path))
    assert list(dataset_events(str(path), check_lines=False)) == [b"{truncated", b"not json at all", b"[1, 2]"]


def test_replay_as_is_gets_past_the_json_lines_check(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{truncated\nnot json at all\n")
    args = [sys.executable, "-m", "tidewater.cli", "replay", "--dataset", str(path), "--bootstrap-servers", "127.0.0.1:1"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "is not JSON lines" in refused.stderr
    sent = subprocess.run(args + ["--as-is"], capture_output=True, text=True, timeout=60)
    # no broker at this address: the command went on to connect, with the file's lines accepted
    assert sent.returncode == 2 and "cannot reach Kafka" in sent.stderr and "JSON lines" not in sent.stderr
