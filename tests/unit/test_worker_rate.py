"""The benchmarks' processing rate, from the acks the workers stamp themselves."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streams.app import AckTimes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from worker_rate import acked_rate  # noqa: E402


def stats(times: AckTimes) -> dict:
    return {"processed": times.acked_total, "acks": times.as_dict()}


def test_rate_leaves_out_the_first_batch_and_spans_all_workers():
    one, two = AckTimes(), AckTimes()
    one.acked(500, 10.0)  # its start is not stamped: left out
    one.acked(1000, 11.0)
    two.acked(700, 10.5)
    two.acked(800, 12.0)
    assert acked_rate([stats(one), stats(two)]) == pytest.approx((500 + 1000 + 700 + 800 - 500) / 2.0)


def test_no_rate_before_two_acks():
    only = AckTimes()
    assert acked_rate([stats(only)]) is None
    only.acked(100, 5.0)
    assert acked_rate([stats(only), {"processed": 0}]) is None
