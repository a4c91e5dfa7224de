"""Real datasets shipped inside installed PyPI packages, read with importlib.resources.

Nothing is downloaded and nothing is committed: CDNOW comes from `lifetimes` 0.11.3 and MovieLens
ml-100k from `recbole` 1.2.1 (installed with --no-deps; its licence forbids redistribution).

All loaders return plain pandas frames with event time as UTC epoch seconds (`ts`, float64).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd


class DatasetMissing(RuntimeError):
    """Raised with an install hint when the package that ships a dataset is absent."""


def _package_file(package: str, *parts: str, hint: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise DatasetMissing(f"package {package!r} is not installed: {hint}") from exc
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise DatasetMissing(f"{path} not found in package {package!r}: {hint}")
    return path


def cdnow_path(sample: bool = False) -> Path:
    name = "CDNOW_sample.txt" if sample else "CDNOW_master.txt"
    return _package_file("lifetimes", "datasets", name, hint="pip install lifetimes==0.11.3")


def load_cdnow(sample: bool = False) -> pd.DataFrame:
    """CDNOW purchase log: one row per purchase line.

    Columns: user_id (str), ts (float epoch seconds, midnight UTC of the purchase date),
    quantity (int, number of CDs), amount (float, dollars). Sorted by (ts, user_id) stably.
    The master file has 69,659 rows and 23,570 customers (1997-01-01..1998-06-30); the sample
    (Fader, Hardie & Lee 2005) has 2,357 customers and an extra id column.
    """
    path = cdnow_path(sample)
    raw = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, engine="python")
    if raw.iloc[0, 0] == "customer_id":  # the master file has a header row
        raw = raw.iloc[1:]
    if raw.shape[1] == 5:  # sample: customer_id, new_id, date, cds, dollars
        raw = raw.iloc[:, [0, 2, 3, 4]]
    raw.columns = ["user_id", "date", "quantity", "amount"]
    dates = pd.to_datetime(raw["date"], format="%Y%m%d", utc=True)
    frame = pd.DataFrame(
        {
            "user_id": "c" + raw["user_id"].str.lstrip("0").str.zfill(1),
            "ts": (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype("float64"),
            "quantity": raw["quantity"].astype(int),
            "amount": raw["amount"].astype(float),
        }
    )
    return frame.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class MovieLens:
    interactions: pd.DataFrame  # user_id, item_id (str), rating (float), ts (float)
    items: pd.DataFrame  # item_id (str), title, year, genres, item_text


def _ml100k_file(suffix: str) -> Path:
    return _package_file(
        "recbole", "dataset_example", "ml-100k", f"ml-100k.{suffix}",
        hint="pip install --no-deps recbole==1.2.1",
    )


def load_ml100k() -> MovieLens:
    """MovieLens ml-100k from recbole: 100,000 ratings, 943 users, 1,682 items.

    Each rating is treated as an interaction event at its timestamp. `item_text` is
    "title (year) — genres", the text used for cold-start item embeddings.
    """
    inter = pd.read_csv(_ml100k_file("inter"), sep="\t", dtype=str)
    inter.columns = ["user_id", "item_id", "rating", "ts"]
    inter["rating"] = inter["rating"].astype(float)
    inter["ts"] = inter["ts"].astype(float)
    inter["user_id"] = "m" + inter["user_id"]
    # a user's ratings in one second (76 % of them share one with another) in the order `evaluate recs` and
    # training put them (``evaluation._tie_key``): sorted by item id, the stream folded them in another order than
    # the one the served path was measured on (941 of 943 users' histories differed; found by a skew review)
    from models.recs.evaluation import _tie_key

    inter["_tie"] = _tie_key(inter["user_id"], inter["item_id"])
    inter = inter.sort_values(["ts", "user_id", "_tie"], kind="stable").drop(columns="_tie").reset_index(drop=True)
    items = pd.read_csv(_ml100k_file("item"), sep="\t", dtype=str, quoting=3).fillna("")
    items.columns = ["item_id", "title", "year", "genres"]
    items["item_text"] = items["title"] + " (" + items["year"] + ") — " + items["genres"].str.replace(" ", ", ")
    return MovieLens(interactions=inter, items=items)


def ml100k_categories(items: pd.DataFrame) -> dict[str, str]:
    """First genre of each item, used as the event's category."""
    return {i: (g.split(" ")[0] if g else "unknown") for i, g in zip(items["item_id"], items["genres"])}


def fingerprint(frame: pd.DataFrame) -> str:
    """Stable content hash of a frame (training-data fingerprint stored in model artifacts)."""
    import hashlib

    h = hashlib.sha256()
    h.update(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64).tobytes())
    return h.hexdigest()[:16]
