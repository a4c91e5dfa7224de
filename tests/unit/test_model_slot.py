"""streams/model_slot.py: a version preloaded before the worker starts is taken by the first reload, once."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from streams.model_slot import RegistrySlot


class CountingSlot(RegistrySlot):
    """A registry whose current version the test sets; loading records which thread loaded what."""

    def __init__(self) -> None:
        self.current = SimpleNamespace(version="placeholder")
        self.published: str | None = "v1"
        self.loads: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.release.set()

    def _wanted(self):
        return self.published

    def _load(self, wanted):
        self.release.wait(10)
        self.loads.append((wanted, threading.current_thread().name))
        return SimpleNamespace(version=wanted)

    label = "test"  # the metric's "kind"

    def _gauge_labels(self):
        return [(self.label, self.current.version)]


def test_the_first_reload_takes_the_preloaded_version_without_loading_it_again():
    slot, executor = CountingSlot(), ThreadPoolExecutor(1, thread_name_prefix="engine")
    slot.release.clear()
    slot.preload(executor)  # loading starts before any event loop runs
    assert slot.current.version == "placeholder"
    slot.release.set()
    assert asyncio.run(slot.maybe_reload(executor)) is True
    assert slot.current.version == "v1" and slot.loaded == "v1"
    assert [v for v, _ in slot.loads] == ["v1"] and slot.loads[0][1].startswith("engine")
    assert asyncio.run(slot.maybe_reload(executor)) is False  # nothing new: no second load


def test_a_version_published_after_the_preload_is_loaded_instead():
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    slot.preload(executor)
    slot.published = "v2"
    assert asyncio.run(slot.maybe_reload(executor)) is True
    assert slot.current.version == "v2"
    assert asyncio.run(slot.maybe_reload(executor)) is False


def _load_failures() -> float:
    from streams import metrics

    return metrics.REGISTRY.get_sample_value("tidewater_model_load_failures_total", {"kind": "model"}) or 0.0


def test_a_version_that_keeps_failing_is_tried_three_times_then_left_alone():
    from streams.model_slot import LOAD_ATTEMPTS

    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    calls = []

    def broken(wanted):
        calls.append(wanted)
        raise OSError("truncated weights")

    before = _load_failures()
    slot._load = broken
    slot.preload(executor)
    for _ in range(LOAD_ATTEMPTS + 2):
        assert asyncio.run(slot.maybe_reload(executor)) is False
        assert slot.current.version == "placeholder" and slot.loaded is None  # the stream goes on
    assert calls == ["v1"] * LOAD_ATTEMPTS and _load_failures() - before == LOAD_ATTEMPTS
    slot.published = "v2"  # a new version is tried again
    assert asyncio.run(slot.maybe_reload(executor)) is False and calls[-1] == "v2"


def test_regression_a_version_given_up_on_is_tried_again_when_current_points_at_it_again(caplog):
    """The count of failed loads was cleared only by a successful load: after three failures (a version made
    unreadable, say), an operator who fixed it and pointed ``current`` away and back again left the worker on
    the other version for good, with no log line (found by review). Moving the pointer gives it its attempts
    again."""
    import logging

    from streams.model_slot import LOAD_ATTEMPTS

    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    slot.published = "v0"
    assert asyncio.run(slot.maybe_reload(executor)) is True and slot.current.version == "v0"
    load, broken = slot._load, [True]

    def fixable(wanted):
        if wanted == "v1" and broken[0]:
            raise OSError("Permission denied")
        return load(wanted)

    slot._load = fixable
    slot.published = "v1"
    with caplog.at_level(logging.ERROR):
        for _ in range(LOAD_ATTEMPTS + 1):
            assert asyncio.run(slot.maybe_reload(executor)) is False and slot.current.version == "v0"
        assert [r.name for r in caplog.records] == ["tidewater.models"] * LOAD_ATTEMPTS
    broken[0] = False
    slot.published = "v0"  # back to the version that serves: nothing to load
    assert asyncio.run(slot.maybe_reload(executor)) is False and slot.current.version == "v0"
    slot.published = "v1"  # pointed at the fixed version again
    assert asyncio.run(slot.maybe_reload(executor)) is True and slot.current.version == "v1"


def test_regression_a_load_that_failed_once_is_retried():
    """A failed load marked its version as loaded, so a transient failure at start-up (a file still being copied,
    a busy network mount) left the worker on the placeholder until another version was published (found by
    review)."""
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    load, failed = slot._load, []

    def flaky(wanted):
        if not failed:
            failed.append(wanted)
            raise OSError("Stale file handle")
        return load(wanted)

    slot._load = flaky
    assert asyncio.run(slot.maybe_reload(executor)) is False and slot.current.version == "placeholder"
    assert asyncio.run(slot.maybe_reload(executor)) is True and slot.current.version == "v1"


def test_a_load_in_flight_does_not_block_and_is_swapped_in_once_done():
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    slot.release.clear()
    assert slot.poll(executor) is True
    assert slot.take_loaded() is False and slot.current.version == "placeholder"  # still loading: no wait
    assert slot.poll(executor) is True and len(slot.loads) == 0  # no second load started meanwhile
    slot.release.set()
    executor.submit(lambda: None).result(timeout=10)  # the load (queued before) has finished
    assert slot.take_loaded() is True and slot.current.version == "v1"
    assert slot.poll(executor) is False


def test_regression_a_hot_reload_loads_outside_the_engine_thread(tmp_path):
    """Loading a new version ran in the engine's only thread, so batch processing stopped for the whole load
    (seconds for big weights or a big FAISS index; found by review)."""
    from tests.unit.pipelines import offline_pipeline

    pipeline = offline_pipeline(tmp_path)
    slot, gate, loading = pipeline.churn_slot, threading.Event(), threading.Event()

    def slow_load(wanted):
        loading.set()
        gate.wait(10)
        return SimpleNamespace(version=wanted)

    slot._wanted, slot._load = (lambda: "v9"), slow_load
    try:
        assert slot.poll(pipeline.loader) and loading.wait(10)
        assert pipeline.executor.submit(lambda: "a batch").result(timeout=5) == "a batch"
    finally:
        gate.set()


def test_the_model_info_metric_shows_only_what_serves_now():
    from streams import metrics

    def series():
        return {s.labels["version"]: s.value for m in metrics.REGISTRY.collect() if m.name == "tidewater_model_info"
                for s in m.samples if s.labels["kind"] == "test-info"}

    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    slot.label = "test-info"
    slot._publish()
    assert series() == {"placeholder": 1.0}
    for version in ("v1", "v2"):
        slot.published = version
        assert asyncio.run(slot.maybe_reload(executor)) is True
        assert series() == {version: 1.0}  # the replaced version's series is gone, not left at 0


def test_a_rollback_to_an_earlier_version_is_loaded_like_a_new_one():
    """`tidewater models use churn v0001` points ``current`` back: the worker follows the pointer, whatever the
    version's age."""
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    for version in ("v1", "v2", "v1"):
        slot.published = version
        assert asyncio.run(slot.maybe_reload(executor)) is True
        assert slot.current.version == version
    assert [v for v, _ in slot.loads] == ["v1", "v2", "v1"]


def test_regression_the_failure_counters_exist_at_zero_before_the_first_failure():
    """The alert rules use increase(); a labelled counter that first appears at 1 shows no increase, so a first
    load failure or a first scoring failure of a version never alerted (found by review)."""
    from streams import metrics

    slot = CountingSlot()
    slot.metric_kind = "never-failed"
    slot.current = SimpleNamespace(version="v-never-failed")
    slot._publish()
    value = metrics.REGISTRY.get_sample_value
    assert value("tidewater_model_load_failures_total", {"kind": "never-failed"}) == 0.0
    assert value("tidewater_scoring_errors_total", {"model_version": "v-never-failed"}) == 0.0


def test_an_unreadable_registry_keeps_the_model_serving():
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)

    def unreadable():
        raise PermissionError(13, "Permission denied", "var/registry/churn/current")

    slot._wanted = unreadable
    assert asyncio.run(slot.maybe_reload(executor)) is False and slot.current.version == "placeholder"

    def not_text():
        return b"\xff".decode()  # a pointer file that is not UTF-8: raised into the batch loop before

    slot._wanted = not_text
    assert asyncio.run(slot.maybe_reload(executor)) is False and slot.current.version == "placeholder"


def test_a_registry_error_that_persists_is_logged_once_not_every_poll(caplog):
    """A ``current`` naming no version of the registry (``Registry.current_version`` raises since the security
    review) is an error until an operator fixes it: logged when it starts and when it changes, not every 5 s."""
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    cause = {"pointer": "/etc"}

    def bad_pointer():
        raise ValueError(f"current names {cause['pointer']!r}, which is not a version directory of this registry")

    slot._wanted = bad_pointer
    caplog.set_level("ERROR", logger="tidewater.models")
    for _ in range(3):
        assert asyncio.run(slot.maybe_reload(executor)) is False
    cause["pointer"] = "../elsewhere"
    assert asyncio.run(slot.maybe_reload(executor)) is False
    logged = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    assert len(logged) == 2 and "'/etc'" in logged[0] and "'../elsewhere'" in logged[1]
    slot._wanted = lambda: "v1"  # fixed: loads, and a later error is logged again
    assert asyncio.run(slot.maybe_reload(executor)) is True


def test_regression_a_hung_load_is_logged_with_the_version_it_holds_back(monkeypatch, caplog):
    """A load stuck in a read (a hung mount) held back every later version without a word."""
    import streams.model_slot as model_slot

    clock = [1000.0]
    monkeypatch.setattr(model_slot.time, "monotonic", lambda: clock[0])
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    slot.release.clear()
    assert slot.poll(executor)
    clock[0] += model_slot.SLOW_LOAD_S - 1
    with caplog.at_level("WARNING", logger="tidewater.models"):
        slot.poll(executor)
        assert not caplog.records  # not slow yet
        clock[0] += 2
        slot.published = "v2"
        slot.poll(executor)
        slot.poll(executor)  # once per SLOW_LOAD_S, not at every poll
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "v1" in message and "v2 was published since and waits for it" in message and "placeholder" in message
    slot.release.set()
    executor.shutdown(wait=True)


def test_regression_a_start_up_load_that_hangs_is_logged_too(monkeypatch, caplog):
    """The start-up load (maybe_reload, before the first batch) waited without a word: only hot reloads said that a
    load was stuck."""
    import streams.model_slot as model_slot

    monkeypatch.setattr(model_slot, "SLOW_LOAD_S", 0.05)
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    slot.release.clear()
    warn = slot._warn_if_slow

    def warn_then_release() -> None:  # the load ends only once the wait has been said: no race with a timer
        slot._loading_since -= 1.0  # older than SLOW_LOAD_S however fast the loop came back
        warn()
        slot.release.set()

    slot._warn_if_slow = warn_then_release
    with caplog.at_level("WARNING", logger="tidewater.models"):
        assert asyncio.run(slot.maybe_reload(executor)) is True
    assert slot.current.version == "v1"
    assert any("loading model v1 has taken" in r.getMessage() for r in caplog.records)
    executor.shutdown(wait=True)


def test_regression_scoring_error_series_do_not_grow_with_every_version_served():
    """Each version served left a tidewater_scoring_errors series behind for good: with daily retraining, one
    more series per day (found by review). The version in use and the one before it keep theirs."""
    from streams import metrics

    def series():
        return sorted(s.labels["model_version"] for m in metrics.REGISTRY.collect()
                      if m.name == "tidewater_scoring_errors" for s in m.samples
                      if s.name.endswith("_total") and s.labels["model_version"].startswith("e-"))

    slot, executor = CountingSlot(), ThreadPoolExecutor(1)
    for version in ("e-v1", "e-v2", "e-v3", "e-v4"):
        slot.published = version
        assert asyncio.run(slot.maybe_reload(executor)) is True
    assert series() == ["e-v3", "e-v4"]


def test_regression_a_stuck_load_does_not_hold_the_process_at_exit(tmp_path):
    """The loader was a ThreadPoolExecutor, whose threads are joined at interpreter exit: a model load stuck in a
    read (a hung network mount) kept a stopped worker from exiting until it was killed (concurrency review). Loads
    run one at a time in daemon threads now."""
    import subprocess
    import sys

    script = (
        "import threading, time\n"
        "from streams.model_slot import LoaderThreads\n"
        "loader = LoaderThreads()\n"
        "order = []\n"
        "first = loader.submit(lambda: order.append('a') or 'a')\n"
        "second = loader.submit(lambda: order.append('b') or 'b')\n"
        "assert (first.result(5), second.result(5)) == ('a', 'b') and sorted(order) == ['a', 'b']\n"
        "failing = loader.submit(lambda: 1 / 0)\n"
        "assert isinstance(failing.exception(5), ZeroDivisionError)\n"
        "loader.submit(time.sleep, 3600)  # stuck for an hour\n"
        "time.sleep(0.2)\n"
        "print('exiting')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert done.returncode == 0 and "exiting" in done.stdout, done.stderr


def test_loader_threads_run_one_load_at_a_time_and_slots_use_them(tmp_path):
    """Two slots (churn, recs) may poll at once: their loads still run one after the other, as with the
    one-thread pool before (two model loads at once doubled the memory peak)."""
    from streams.model_slot import LoaderThreads

    loader, release, started = LoaderThreads(), threading.Event(), []

    def load(name):
        started.append(name)
        assert release.wait(10)
        return name

    first = loader.submit(load, "churn")
    second = loader.submit(load, "recs")
    deadline = time.monotonic() + 5
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(started) == 1 and not first.done() and not second.done()  # the other waits (either may go first)
    release.set()
    assert (first.result(5), second.result(5)) == ("churn", "recs") and sorted(started) == ["churn", "recs"]
    # a slot loads through it as through the pool
    slot = CountingSlot()
    assert asyncio.run(slot.maybe_reload(loader)) and slot.current.version == "v1"
