"""Shared helpers for the churn tests (tiny configs and slices so the whole set stays fast)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from models.churn.model import ChurnConfig

torch.set_num_threads(1)

CUTOFF = 875664000.0  # 1997-10-01 00:00 UTC (CDNOW week 40 starts)


TINY = dict(hidden=16, layers=1, heads=2, intermediate=32, pretrain_epochs=2, finetune_epochs=3, patience=5,
            batch_size=64, item_buckets=64, category_buckets=16, max_events=16, min_steps_per_epoch=4)


def tiny_config(**over) -> ChurnConfig:
    return ChurnConfig(**(TINY | over))


@functools.lru_cache(maxsize=1)
def cdnow_sample():
    from models.datasets import load_cdnow

    return load_cdnow(sample=True)


def sample_slice(n_users: int = 400, seed: int = 0):
    frame = cdnow_sample()
    users = np.sort(frame["user_id"].unique())
    keep = np.random.default_rng(seed).choice(users, n_users, replace=False)
    return frame[frame["user_id"].isin(keep)].reset_index(drop=True)


def random_events(rng: np.random.Generator, n: int, t0: float = 1e9, span_days: float = 200.0) -> list[dict]:
    ts = np.sort(t0 + rng.uniform(0, span_days * 86400, n))
    out = []
    for t in ts:
        if rng.random() < 0.4:
            out.append({"ts": float(t), "type": "click", "item": f"i{rng.integers(50)}", "category": f"c{rng.integers(5)}"})
        else:
            out.append({"ts": float(t), "type": "purchase", "item": f"i{rng.integers(50)}",
                        "amount": float(rng.uniform(1, 100)), "quantity": int(rng.integers(1, 4))})
    return out
