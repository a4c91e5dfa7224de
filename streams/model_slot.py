"""The churn scorer the worker uses, hot-reloaded from the model registry without a restart.

Until a version is published to ``<registry>/churn`` the named placeholder (``heuristic:recency-v1``) scores.
The worker polls the registry's atomic ``current`` pointer; a new version is loaded in the engine's executor
thread (the event loop keeps consuming) and swapped in between two batches, so every output carries the
``model_version`` of the scorer that produced it.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from models.registry import Registry
from streams import metrics
from tidewater.placeholders import RecencyHeuristic

log = logging.getLogger("tidewater.models")


class RingScorer:
    """Adapts a model scorer (event dicts) to the profile's ring of ``RecentEvent`` structs."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.version = scorer.version

    def score_many(self, sequences: Any, as_of: Any) -> Any:
        import msgspec

        as_dicts = [[msgspec.structs.asdict(e) | {"item": e.item_id} for e in ring] for ring in sequences]
        return self.scorer.score_many(as_dicts, as_of)


class ChurnScorerSlot:
    def __init__(self, registry_dir: str | Path) -> None:
        self.registry = Registry(Path(registry_dir) / "churn")
        self.loaded_version: str | None = None
        self.scorer: Any = RecencyHeuristic()
        metrics.MODEL_VERSION.labels("churn", self.scorer.version).set(1)

    def _load(self, version: str) -> Any:
        import torch

        from models.churn.scorer import ChurnScorer

        torch.set_num_threads(1)  # small model, 2 shared cores: more threads measured slower
        return RingScorer(ChurnScorer.load(self.registry.path(version)))

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
