"""The churn scorer and the recommender the worker uses, hot-reloaded from the model registry.

Until a version is published to ``<registry>/churn`` (``<registry>/recs``) the named placeholder scores
(recommends). The worker polls the registry's atomic ``current`` pointers; a new version is loaded in a loader
thread of its own (the event loop keeps consuming and the engine thread keeps processing batches) and swapped in
between two batches, so every output carries the versions of the models that produced it. A FAISS index
published for the current recs model under ``<registry>/recs_index`` (``tidewater index build``) replaces the
model's own index the same way.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from models.registry import Registry, serving_index
from streams import metrics
from tidewater.placeholders import RecencyHeuristic
from tidewater.scoring import RingScorer

log = logging.getLogger("tidewater.models")

LOAD_ATTEMPTS = 3  # loads of one version before it is left alone (each poll interval apart)
KEEP_ERROR_SERIES = 2  # tidewater_scoring_errors series kept per slot: the version in use and the one before
SLOW_LOAD_S = 300.0  # a load running this long (a hung network mount, say) is logged, again at each multiple


class LoaderThreads:
    """``submit`` for model loads: each call in a daemon thread of its own, one call at a time. A
    ThreadPoolExecutor's threads are joined at interpreter exit, so a load stuck in a read (a hung network mount:
    nothing can stop such a thread) kept a stopped worker from exiting until it was killed (found by a
    concurrency review)."""

    def __init__(self, name: str = "tidewater-loader") -> None:
        self.name = name
        self._one_at_a_time = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()

        def run() -> None:
            with self._one_at_a_time:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
                    future.set_exception(exc)

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return future


class RegistrySlot:
    """What both slots share: poll the registry for the wanted version, load it in the executor, swap it in,
    keep the old one (and log) when a version fails to load, and move the ``tidewater_model_info`` series."""

    kind = "model"
    metric_kind = "model"  # the ``kind`` label of its metrics, as in ``tidewater_model_info``
    loaded: Any = None  # the registry version(s) in use; None: the placeholder
    current: Any
    # versions with a tidewater_scoring_errors series, oldest first (each slot's own list from its first _publish)
    _error_series: list[str] = []

    def _wanted(self) -> Any:
        raise NotImplementedError

    def _load(self, wanted: Any) -> Any:
        raise NotImplementedError

    def _gauge_labels(self) -> list[tuple[str, str]]:
        """The ``tidewater_model_info`` series (kind, version) of what serves now."""
        raise NotImplementedError

    def _publish(self) -> None:
        for labels in self._gauge_labels():
            metrics.MODEL_VERSION.labels(*labels).set(1)
        # the failure counters of what serves now exist from the start, at 0: an alert on increase() sees no
        # increase from a series that first appears already at 1 (a first failure would never alert)
        metrics.MODEL_LOAD_FAILURES.labels(self.metric_kind)
        metrics.SCORING_ERRORS.labels(self.current.version)
        # one series per version ever served grew without end with retraining (found by review): the version in
        # use and the one before it are kept (errors of its last batches still reach an alert's window)
        served = self._error_series = [v for v in self._error_series if v != self.current.version]
        served.append(self.current.version)
        while len(served) > KEEP_ERROR_SERIES:
            try:
                metrics.SCORING_ERRORS.remove(served.pop(0))
            except KeyError:
                pass

    def _unpublish(self) -> None:
        for labels in self._gauge_labels():
            try:
                metrics.MODEL_VERSION.remove(*labels)
            except KeyError:  # never published
                pass

    _loading: tuple[Any, Any] | None = None  # (version, concurrent.futures.Future) being loaded
    _read_error: str | None = None  # the registry's last read error, logged once
    _failures: tuple[Any, int] | None = None  # (version, failed loads of it so far)

    def poll(self, executor: Any) -> bool:
        """Start loading the registry's current version in ``executor`` if it is new and nothing is loading;
        True when a load is in flight. ``take_loaded`` swaps it in once done. A version that failed to load is
        tried ``LOAD_ATTEMPTS`` times in all (a file still being copied, a busy network mount), then left alone
        until ``current`` names another version (a version pointed at again is tried again)."""
        if self._loading is not None:
            self._warn_if_slow()
            return True
        try:
            wanted = self._wanted()
        except (OSError, ValueError) as exc:  # an unreadable registry (permissions, a lost mount, a pointer that
            # is not text or names no version of it): keep serving, say why (once per cause, not every poll)
            if repr(exc) != self._read_error:
                self._read_error = repr(exc)
                log.error("could not read the %s registry: %r; keeping %s", self.kind, exc, self.current.version)
            return False
        self._read_error = None
        if self._failures is not None and self._failures[0] != wanted:
            self._failures = None  # pointed elsewhere since: a version pointed at again gets its attempts again
        if wanted is None or wanted == self.loaded:
            return False
        if self._failures is not None and self._failures[0] == wanted and self._failures[1] >= LOAD_ATTEMPTS:
            return False
        self._loading = (wanted, executor.submit(self._load, wanted))
        self._loading_since, self._slow_warnings = time.monotonic(), 0
        return True

    _loading_since = 0.0
    _slow_warnings = 0

    def _warn_if_slow(self) -> None:
        """A load never times out (nothing can stop a thread stuck in a read), but it holds back every version
        published after it: say so, so that an operator can look."""
        assert self._loading is not None
        age = time.monotonic() - self._loading_since
        if age < SLOW_LOAD_S * (self._slow_warnings + 1):
            return
        self._slow_warnings += 1
        newer = self._safe_wanted()
        waiting = f"; {newer} was published since and waits for it" if newer not in (None, self._loading[0]) else ""
        log.warning("loading %s %s has taken %.0f s and is still running; %s keeps serving%s", self.kind,
                    self._loading[0], age, self.current.version, waiting)

    def _safe_wanted(self) -> Any:
        try:
            return self._wanted()
        except (OSError, ValueError):
            return None

    preload = poll  # at start-up: loading overlaps the group join and the table recovery

    def take_loaded(self) -> bool:
        """Swap in a finished load; True when a new version now serves (the caller hands it to the engines)."""
        if self._loading is None or not self._loading[1].done():
            return False
        (wanted, future), self._loading = self._loading, None
        try:
            current = future.result()
        except Exception as exc:  # a broken artifact must not stop the stream: keep what serves now
            attempts = (self._failures[1] if self._failures and self._failures[0] == wanted else 0) + 1
            self._failures = (wanted, attempts)
            then = "giving up on it until current names another version" if attempts >= LOAD_ATTEMPTS \
                else "will retry"
            log.error("could not load %s %s (attempt %d of %d): %r; keeping %s, %s", self.kind, wanted, attempts,
                      LOAD_ATTEMPTS, exc, self.current.version, then)
            metrics.MODEL_LOAD_FAILURES.labels(self.metric_kind).inc()
            return False
        self._failures = None
        self._swap(wanted, current)
        return True

    def load_current_blocking(self) -> bool:
        wanted = self._wanted()
        if wanted is None or wanted == self.loaded:
            return False
        self._swap(wanted, self._load(wanted))
        return True

    async def maybe_reload(self, executor: Any) -> bool:
        """Load a new version now and swap it in; True when one was (at start-up, before the first batch; the
        batch loop uses ``poll`` and ``take_loaded`` and keeps processing while a version loads)."""
        swapped = False
        for _ in range(2):  # the version being loaded, then one published meanwhile
            if not self.poll(executor):
                break
            assert self._loading is not None
            loading = asyncio.wrap_future(self._loading[1])
            while not (await asyncio.wait([loading], timeout=SLOW_LOAD_S))[0]:
                self._warn_if_slow()  # a start-up load stuck in a read is said too, not only a hot reload's
            if not loading.cancelled():
                loading.exception()  # retrieved: take_loaded logs a failure once, asyncio must not log it again
            if not self.take_loaded():
                break
            swapped = True
        return swapped

    def _swap(self, wanted: Any, current: Any) -> None:
        self._unpublish()  # the replaced version's series goes: one series per kind, not per version ever served
        self.current, self.loaded = current, wanted
        self._publish()
        log.info("%s in use", self._describe())

    def _describe(self) -> str:
        return f"{self.kind} {self.current.version}"


class ChurnScorerSlot(RegistrySlot):
    kind = "churn model"
    metric_kind = "churn"

    def __init__(self, registry_dir: str | Path, micro_batch: int = 256, threads: int = 1) -> None:
        self.registry = Registry(Path(registry_dir) / "churn")
        self.micro_batch = micro_batch  # most sequences per forward pass
        self.threads = max(1, threads)
        self.current: Any = RecencyHeuristic()
        self._publish()

    @property
    def scorer(self) -> Any:
        return self.current

    def _wanted(self) -> str | None:
        return self.registry.current_version()

    def _load(self, version: str) -> Any:
        import torch

        from models.churn.scorer import ChurnScorer

        torch.set_num_threads(self.threads)  # small model, few shared cores: more threads measured slower
        scorer = ChurnScorer.load(self.registry.path(version), micro_batch=self.micro_batch)
        scorer.warm_up()  # on a GPU: every batch shape once, here in the loader thread, not in the first batches
        return RingScorer(scorer)

    def _gauge_labels(self) -> list[tuple[str, str]]:
        return [("churn", self.current.version)]

    def _describe(self) -> str:
        model = getattr(self.current, "scorer", None)
        if model is not None and not getattr(model, "uses_encoder", True):
            return f"{super()._describe()} (kept its GLM start: scores from the summary features, no encoder pass)"
        return super()._describe()


class RecommenderSlot(RegistrySlot):
    """The recommender in use: the registry's current recs model with the newest index built for it."""

    kind = "recommender"
    metric_kind = "recs"

    def __init__(self, registry_dir: str | Path, rerank_candidates: int | None = None) -> None:
        from models.recs.rerank import RERANK_CANDIDATES
        from tidewater.recommending import PartitionPopularity

        self.rerank_candidates = RERANK_CANDIDATES if rerank_candidates is None else rerank_candidates

        self.models = Registry(Path(registry_dir) / "recs")
        self.indexes = Registry(Path(registry_dir) / "recs_index")
        self.current: Any = PartitionPopularity()
        self._publish()

    @property
    def recommender(self) -> Any:
        return self.current

    def _wanted(self) -> tuple[str, str | None] | None:
        model = self.models.current_version()
        if model is None:
            return None
        return model, serving_index(self.indexes, model)

    def _load(self, wanted: tuple[str, str | None]) -> Any:
        from models.recs.recommender import Recommender
        from tidewater.recommending import VectorRecommender

        model_version, index_version = wanted
        model = Recommender(self.models.path(model_version), rerank_candidates=self.rerank_candidates)
        if index_version is None:
            return VectorRecommender(model)
        recommender = VectorRecommender(model, index_dir=str(self.indexes.path(index_version)),
                                        index_version=f"{model_version}/{index_version}")
        if recommender.index_error is not None:  # served with the model's own index; not tried again
            metrics.MODEL_LOAD_FAILURES.labels("index").inc()
        return recommender

    def _publish(self) -> None:
        super()._publish()
        metrics.MODEL_LOAD_FAILURES.labels("index")  # at 0 from the start, like the models' own

    def _gauge_labels(self) -> list[tuple[str, str]]:
        return [("recs", self.current.version), ("index", self.current.index_version)]

    def _describe(self) -> str:
        return f"recommender {self.current.version} with index {self.current.index_version}"
