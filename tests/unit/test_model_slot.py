"""streams/model_slot.py: a version preloaded before the worker starts is taken by the first reload, once."""
from __future__ import annotations

import asyncio
import threading
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


def test_a_preload_that_fails_keeps_the_placeholder_and_the_stream_going():
    slot, executor = CountingSlot(), ThreadPoolExecutor(1)

    def broken(wanted):
        raise OSError("truncated weights")

    from streams import metrics

    def failures() -> float:
        return metrics.REGISTRY.get_sample_value("tidewater_model_load_failures_total", {"kind": "model"}) or 0.0

    before = failures()
    slot._load = broken
    slot.preload(executor)
    assert asyncio.run(slot.maybe_reload(executor)) is False
    assert slot.current.version == "placeholder" and slot.loaded == "v1"  # not retried until a new version
    assert failures() - before == 1  # counted once, for the alert rule
    assert asyncio.run(slot.maybe_reload(executor)) is False and failures() - before == 1


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
