"""The benchmarks' processing rate, from the acks the workers stamp themselves."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streams.app import AckTimes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from worker_rate import acked_rate  # noqa: E402


class Worker:
    """What the pipeline keeps: the records acked so far (``processed``) and the ack times."""

    def __init__(self) -> None:
        self.processed, self.times = 0, AckTimes()

    def ack(self, n: int, now: float) -> None:
        self.processed += n
        self.times.acked(n, now)

    def stats(self) -> dict:
        return {"processed": self.processed, "acks": self.times.as_dict()}


def test_rate_leaves_out_the_first_batch_and_spans_all_workers():
    one, two = Worker(), Worker()
    one.ack(500, 10.0)  # its start is not stamped: left out
    one.ack(1000, 11.0)
    two.ack(700, 10.5)
    two.ack(800, 12.0)
    assert acked_rate([one.stats(), two.stats()]) == pytest.approx((500 + 1000 + 700 + 800 - 500) / 2.0)


def test_no_rate_before_two_acks():
    only = Worker()
    assert acked_rate([only.stats()]) is None
    only.ack(100, 5.0)
    assert acked_rate([only.stats(), {"processed": 0}]) is None
