"""Tiny synthetic interaction logs for the recs tests."""
from __future__ import annotations

import numpy as np
import pandas as pd


def sequential_log(n_users: int = 60, n_items: int = 30, length: int = 12, seed: int = 0,
                   unique_last: bool = False) -> pd.DataFrame:
    """Users walk item ids upward (i -> i+1 mostly), so order matters. With unique_last, each user's
    last event is an item nobody else ever touches (t<user>): a leakage canary."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        cur = int(rng.integers(0, n_items))
        seen = set()
        t = 1_000_000 + u
        for _ in range(length):
            while cur in seen:
                cur = (cur + 1) % n_items
            seen.add(cur)
            rows.append((f"u{u}", f"i{cur}", float(t)))
            t += int(rng.integers(1, 100))
            cur = (cur + (1 if rng.random() < 0.8 else int(rng.integers(2, n_items)))) % n_items
        if unique_last:
            rows.append((f"u{u}", f"t{u}", float(t + 10)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
