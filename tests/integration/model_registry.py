"""Publish small but real model versions into a test registry (as `tidewater train ...` would)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from models.registry import Registry


def publish_tiny_churn(root: Path, seed: int, bias: float = 0.0) -> str:
    """A tiny random churn model; ``bias`` shifts its calibrated logit (e.g. -20 / +20: every probability near 0
    or near 1), so a test can tell from the scores themselves which version produced them."""
    import torch

    from models.churn.train import new_model, save_model
    from tests.models.churn.helpers import tiny_config

    def write(directory: Path) -> None:
        model = new_model(tiny_config(), seed)
        with torch.no_grad():
            model.bias.fill_(bias)
        save_model(model, directory)

    return Registry(root / "churn").publish(write, fingerprint=f"tiny{seed}")


def write_recs_version(directory: Path, item_ids: Sequence[str], seed: int = 0, dim: int = 16,
                       segments: int = 4) -> None:
    """A recs version with random item embeddings over ``item_ids``: the real artifact layout, index and
    segments, without the training time (model quality is tested in tests/models/recs)."""
    from models.recs.index import ItemIndex
    from models.recs.segments import train_segments

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(item_ids), dim)).astype(np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "item_ids.json").write_text(json.dumps(list(item_ids)))
    np.save(directory / "item_emb.npy", emb)
    np.save(directory / "query_emb.npy", emb)
    np.save(directory / "popularity.npy", np.arange(len(item_ids), 0, -1).astype(np.float64))
    (directory / "config.json").write_text(json.dumps({"stream_decay": 0.8, "stream_window": 50}))
    np.save(directory / "segments.npy", train_segments(rng.normal(size=(40 * segments, dim)), k=segments, seed=seed))
    ItemIndex.build(list(item_ids), emb, kind="flat", version=directory.name, use_gpu=False).save(directory / "index")


def publish_tiny_recs(root: Path, item_ids: Sequence[str], seed: int) -> str:
    return Registry(root / "recs").publish(lambda d: write_recs_version(d, item_ids, seed), fingerprint=f"tinyrecs{seed}")
