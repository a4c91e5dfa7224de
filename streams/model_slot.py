"""The churn scorer and the recommender the worker uses, hot-reloaded from the model registry.

Until a version is published to ``<registry>/churn`` (``<registry>/recs``) the named placeholder scores
(recommends). The worker polls the registry's atomic ``current`` pointers; a new version is loaded in the
engine's executor thread (the event loop keeps consuming) and swapped in between two batches, so every output
carries the versions of the models that produced it. A FAISS index published for the current recs model under
``<registry>/recs_index`` (``tidewater index build``) replaces the model's own index the same way.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from models.registry import Registry
from streams import metrics
from tidewater.placeholders import RecencyHeuristic
from tidewater.scoring import RingScorer

log = logging.getLogger("tidewater.models")


class ChurnScorerSlot:
    def __init__(self, registry_dir: str | Path, micro_batch: int = 256) -> None:
        self.registry = Registry(Path(registry_dir) / "churn")
        self.micro_batch = micro_batch  # most sequences per forward pass
        self.loaded_version: str | None = None
        self.scorer: Any = RecencyHeuristic()
        metrics.MODEL_VERSION.labels("churn", self.scorer.version).set(1)

    def _load(self, version: str) -> Any:
        import torch

        from models.churn.scorer import ChurnScorer

        torch.set_num_threads(1)  # small model, 2 shared cores: more threads measured slower
        return RingScorer(ChurnScorer.load(self.registry.path(version), micro_batch=self.micro_batch))

    def load_current_blocking(self) -> bool:
        version = self.registry.current_version()
        if version is None or version == self.loaded_version:
            return False
        self._swap(version, self._load(version))
        return True

    async def maybe_reload(self, executor: Any) -> bool:
        """True when a new version was swapped in (the caller hands it to the engines)."""
        version = self.registry.current_version()
        if version is None or version == self.loaded_version:
            return False
        try:
            scorer = await asyncio.get_running_loop().run_in_executor(executor, self._load, version)
        except Exception as exc:  # a broken artifact must not stop the stream: keep the old scorer
            log.error("could not load churn model %s: %r; keeping %s", version, exc, self.scorer.version)
            self.loaded_version = version
            return False
        self._swap(version, scorer)
        return True

    def _swap(self, version: str, scorer: Any) -> None:
        metrics.MODEL_VERSION.labels("churn", self.scorer.version).set(0)
        self.scorer, self.loaded_version = scorer, version
        metrics.MODEL_VERSION.labels("churn", scorer.version).set(1)
        log.info("churn model %s in use", scorer.version)


class RecommenderSlot:
    """The recommender in use: the registry's current recs model with the newest index built for it."""

    def __init__(self, registry_dir: str | Path) -> None:
        from tidewater.recommending import PartitionPopularity

        self.models = Registry(Path(registry_dir) / "recs")
        self.indexes = Registry(Path(registry_dir) / "recs_index")
        self.loaded: tuple[str, str | None] | None = None
        self.recommender: Any = PartitionPopularity()
        self._gauges(1)

    def _wanted(self) -> tuple[str, str | None] | None:
        model = self.models.current_version()
        if model is None:
            return None
        index = self.indexes.current_version()
        if index is not None:
            try:
                if self.indexes.meta(index).get("model_version") != model:
                    index = None  # built for another model version: the model's own index serves
            except (OSError, ValueError):
                index = None
        return model, index

    def _load(self, wanted: tuple[str, str | None]) -> Any:
        from models.recs.recommender import Recommender
        from tidewater.recommending import VectorRecommender

        model_version, index_version = wanted
        model = Recommender(self.models.path(model_version))
        if index_version is None:
            return VectorRecommender(model)
        return VectorRecommender(model, index_dir=str(self.indexes.path(index_version)),
                                 index_version=f"{model_version}/{index_version}")

    def load_current_blocking(self) -> bool:
        wanted = self._wanted()
        if wanted is None or wanted == self.loaded:
            return False
        self._swap(wanted, self._load(wanted))
        return True

    async def maybe_reload(self, executor: Any) -> bool:
        wanted = self._wanted()
        if wanted is None or wanted == self.loaded:
            return False
        try:
            recommender = await asyncio.get_running_loop().run_in_executor(executor, self._load, wanted)
        except Exception as exc:  # keep serving with what we have
            log.error("could not load recommender %s: %r; keeping %s", wanted, exc, self.recommender.version)
            self.loaded = wanted
            return False
        self._swap(wanted, recommender)
        return True

    def _gauges(self, value: int) -> None:
        metrics.MODEL_VERSION.labels("recs", self.recommender.version).set(value)
        metrics.MODEL_VERSION.labels("index", self.recommender.index_version).set(value)

    def _swap(self, wanted: tuple[str, str | None], recommender: Any) -> None:
        self._gauges(0)
        self.recommender, self.loaded = recommender, wanted
        self._gauges(1)
        log.info("recommender %s with index %s in use", recommender.version, recommender.index_version)
