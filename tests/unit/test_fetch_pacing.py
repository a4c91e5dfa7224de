"""``noida-fetch-wait``: fetches to a node are spaced FETCH_PACE_S apart (streams/broker_quirks.py). noida answers
a fetch with no new records at once, so without this an idle consumer spins (about 1,200 fetches/s)."""
import asyncio

import pytest
from aiokafka.consumer.fetcher import Fetcher

from streams import broker_quirks


@pytest.fixture
def fake_fetch(monkeypatch):
    """Fetcher._proc_fetch_request replaced by a fake that takes ``took`` seconds, and asyncio.sleep recorded."""
    state = {"took": 0.0, "calls": 0, "slept": []}
    clock = {"now": 100.0}

    async def original(self, assignment, node_id, request):
        state["calls"] += 1
        clock["now"] += state["took"]
        return "needs_wakeup"

    async def sleep(seconds):
        state["slept"].append(seconds)

    monkeypatch.setattr(Fetcher, "_proc_fetch_request", original)
    monkeypatch.delattr(Fetcher, "_tidewater_unpaced", raising=False)
    monkeypatch.setattr(broker_quirks.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(broker_quirks.asyncio, "sleep", sleep)
    yield state
    if "_tidewater_unpaced" in vars(Fetcher):  # set by pace_fetches, outside monkeypatch: leave no trace
        delattr(Fetcher, "_tidewater_unpaced")


def call(fetcher_method):
    return asyncio.run(fetcher_method(object(), "assignment", 0, "request"))


def test_an_instant_empty_answer_waits_out_the_pace_before_the_next_request(fake_fetch):
    broker_quirks.pace_fetches(0.005)
    assert call(Fetcher._proc_fetch_request) == "needs_wakeup"  # the original's result is passed through
    assert fake_fetch["calls"] == 1 and fake_fetch["slept"] == [pytest.approx(0.005)]


def test_a_fetch_that_took_longer_than_the_pace_is_not_delayed(fake_fetch):
    broker_quirks.pace_fetches(0.005)
    fake_fetch["took"] = 0.1  # a broker that held the fetch (Tansu, Apache Kafka) or a big response
    call(Fetcher._proc_fetch_request)
    assert fake_fetch["slept"] == []


def test_installing_twice_wraps_the_original_once(fake_fetch):
    broker_quirks.pace_fetches(0.005)
    broker_quirks.pace_fetches(0.005)
    call(Fetcher._proc_fetch_request)
    assert fake_fetch["calls"] == 1 and len(fake_fetch["slept"]) == 1


def test_regression_a_fetch_cancelled_while_pacing_returns_normally(fake_fetch, monkeypatch):
    """aiokafka's Fetcher.close() cancels pending fetches, then awaits them expecting no error (its own method
    swallows the cancellation): a CancelledError out of the pacing sleep broke AIOKafkaConsumer.stop()."""
    async def cancelled_sleep(seconds):
        raise asyncio.CancelledError

    monkeypatch.setattr(broker_quirks.asyncio, "sleep", cancelled_sleep)
    broker_quirks.pace_fetches(0.005)
    assert call(Fetcher._proc_fetch_request) == "needs_wakeup"
