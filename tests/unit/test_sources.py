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
