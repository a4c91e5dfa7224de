"""Reference for tests/models/churn/test_features_fast.py: the per-sequence featurisation exactly as
models/churn/features.py had it at commit b9c5da6, before prepare / collate were batched (verbatim below
this docstring, module docstring dropped). The fast implementation must give identical arrays.
Do not "fix" or speed up this file: it is the specification the fast code is checked against.
"""
from __future__ import annotations

import functools
import math
import zlib
from typing import Any, Iterable, Sequence

import numpy as np

DAY = 86400.0

# token type ids
PAD, CLICK, PURCHASE, MASK, CLS = 0, 1, 2, 3, 4
N_TYPES = 5
TYPE_IDS = {"click": CLICK, "purchase": PURCHASE}

# log-scale time edges in days: 1 min .. 2 years. Bucket 0 = "absent" (no previous event).
TIME_EDGES_DAYS = np.array(
    [1 / 1440, 10 / 1440, 1 / 24, 6 / 24, 1, 2, 4, 7, 14, 21, 30, 45, 60, 90, 120, 180, 270, 365, 540, 730],
    dtype=np.float64,
)
N_TIME_BUCKETS = len(TIME_EDGES_DAYS) + 2  # 0 absent, 1..len+1
# log1p(amount) edges: 0, ~1, 2, 4, 7, 12, 20, 33, 55, 90, 150, 245, 400, 665, 1100 (currency units)
AMOUNT_EDGES_LOG = np.linspace(0.0, 7.0, 15)
N_AMOUNT_BUCKETS = len(AMOUNT_EDGES_LOG) + 2  # 0 absent
N_QTY_BUCKETS = 10  # 0 absent, 1..8 exact, 9 = more than 8
N_CONT = 4  # log1p amount, log1p quantity, log1p gap days, log1p age days


def _bucket_time(days: np.ndarray) -> np.ndarray:
    return 1 + np.searchsorted(TIME_EDGES_DAYS, np.maximum(days, 0.0), side="right")


def _bucket_amount(log_amount: np.ndarray) -> np.ndarray:
    return 1 + np.searchsorted(AMOUNT_EDGES_LOG, log_amount, side="right")


@functools.lru_cache(maxsize=1 << 16)
def stable_bucket(value: Any, buckets: int) -> int:
    """Hash bucket 1..buckets-1 of a string id (0 = absent); stable across processes (crc32)."""
    if value is None or value == "":
        return 0
    return 1 + zlib.crc32(str(value).encode()) % (buckets - 1)


def normalize_events(events: Iterable[dict], as_of: float) -> list[dict]:
    """Events strictly before ``as_of``, sorted by time; purchase lines with the same timestamp
    (one basket split over several rows) are merged into one purchase (amounts and quantities summed)."""
    kept = [e for e in events if float(e["ts"]) < as_of]
    kept.sort(key=lambda e: float(e["ts"]))
    out: list[dict] = []
    for e in kept:
        etype = e.get("type", "purchase")
        if etype not in TYPE_IDS:
            raise ValueError(f"unknown event type {etype!r} (expected 'click' or 'purchase')")
        if out and etype == "purchase" and out[-1]["type"] == "purchase" and float(e["ts"]) == out[-1]["ts"]:
            last = out[-1]  # a NaN on a later line is missing, as on the first (not a NaN total, not a crash)
            if e.get("amount") is not None and not (isinstance(e["amount"], float) and math.isnan(e["amount"])):
                last["amount"] = (last.get("amount") or 0.0) + float(e["amount"])
            if e.get("quantity") is not None and not (isinstance(e["quantity"], float) and math.isnan(e["quantity"])):
                last["quantity"] = (last.get("quantity") or 0) + int(e["quantity"])
            continue
        ev = {"ts": float(e["ts"]), "type": etype}
        for key in ("item", "category"):
            if e.get(key) not in (None, ""):
                ev[key] = str(e[key])
        # clicks carry no amount or quantity (the stream's event ring stores 0.0 / 0 for them);
        # a quantity <= 0 means "unknown"
        if etype == "purchase":
            if e.get("amount") is not None and not (isinstance(e["amount"], float) and math.isnan(e["amount"])):
                ev["amount"] = float(e["amount"])
            q = e.get("quantity")
            if q is not None and not (isinstance(q, float) and math.isnan(q)) and int(q) > 0:
                ev["quantity"] = int(q)
        out.append(ev)
    return out


def encode_tokens(
    events: Sequence[dict],
    as_of: float,
    *,
    max_events: int,
    item_buckets: int,
    category_buckets: int,
) -> dict[str, np.ndarray]:
    """Token arrays for one *normalised* sequence: position 0 is the summary (CLS) token carrying the
    time since the last event up to ``as_of``; then the last ``max_events`` events, most recent first.

    Returns int64 arrays ``type, item, category, amount_b, qty_b, gap_b, age_b`` and float32 ``cont``
    of shape [n+1, N_CONT].
    """
    ev = list(events[-max_events:]) if max_events > 0 else []
    n_all = len(events)
    n = len(ev)
    ts = np.array([e["ts"] for e in ev], dtype=np.float64)
    # gap to the previous event, using the event before the truncation window when there is one
    prev = np.empty(n, dtype=np.float64)
    if n:
        prev[1:] = ts[:-1]
        prev[0] = events[n_all - n - 1]["ts"] if n_all > n else np.nan
    gap_days = (ts - prev) / DAY
    age_days = (as_of - ts) / DAY
    amount = np.array([e.get("amount", np.nan) for e in ev], dtype=np.float64)
    qty = np.array([e.get("quantity", -1) for e in ev], dtype=np.int64)

    log_amount = np.log1p(np.maximum(np.nan_to_num(amount, nan=0.0), 0.0))
    amount_b = np.where(np.isnan(amount), 0, _bucket_amount(log_amount))
    qty_b = np.where(qty < 0, 0, np.clip(qty, 1, N_QTY_BUCKETS - 1))
    gap_b = np.where(np.isnan(gap_days), 0, _bucket_time(np.nan_to_num(gap_days, nan=0.0)))
    age_b = _bucket_time(age_days)
    cont = np.stack(
        [
            log_amount,
            np.log1p(np.maximum(qty, 0)).astype(np.float64),
            np.log1p(np.maximum(np.nan_to_num(gap_days, nan=0.0), 0.0)),
            np.log1p(np.maximum(age_days, 0.0)),
        ],
        axis=1,
    ) if n else np.zeros((0, N_CONT))

    recency_days = (as_of - ts[-1]) / DAY if n else 0.0
    cls_cont = np.array([[0.0, 0.0, 0.0, math.log1p(max(recency_days, 0.0))]])
    cls_age = _bucket_time(np.array([recency_days]))[0] if n else 0

    rev = slice(None, None, -1)  # most recent first
    def cat(head: int, body: np.ndarray) -> np.ndarray:
        return np.concatenate([[head], body[rev]]).astype(np.int64)

    return {
        "type": cat(CLS, np.array([TYPE_IDS[e["type"]] for e in ev], dtype=np.int64)),
        "item": cat(0, np.array([stable_bucket(e.get("item"), item_buckets) for e in ev], dtype=np.int64)),
        "category": cat(0, np.array([stable_bucket(e.get("category"), category_buckets) for e in ev], dtype=np.int64)),
        "amount_b": cat(0, amount_b),
        "qty_b": cat(0, qty_b),
        "gap_b": cat(0, gap_b),
        "age_b": cat(cls_age, age_b),
        "cont": np.concatenate([cls_cont, cont[rev]]).astype(np.float32),
    }


TOKEN_KEYS = ("type", "item", "category", "amount_b", "qty_b", "gap_b", "age_b")


def collate(tokens: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Right-pad a list of token dicts to the longest one; adds ``attention_mask``."""
    length = max(len(t["type"]) for t in tokens)
    b = len(tokens)
    out = {k: np.zeros((b, length), dtype=np.int64) for k in TOKEN_KEYS}
    out["cont"] = np.zeros((b, length, N_CONT), dtype=np.float32)
    out["attention_mask"] = np.zeros((b, length), dtype=np.int64)
    for i, t in enumerate(tokens):
        n = len(t["type"])
        for k in TOKEN_KEYS:
            out[k][i, :n] = t[k]
        out["cont"][i, :n] = t["cont"]
        out["attention_mask"][i, :n] = 1
    return out


SUMMARY_NAMES = (
    "log_n_purchases", "log_n_events", "log_n_clicks", "log_recency_purchase_days", "log_recency_event_days",
    "log_age_days", "log_purchase_span_days", "repeat_rate_per_day", "span_over_age", "log_mean_gap_days",
    "log_std_gap_days", "log_last_gap_days", "log_max_gap_days", "log_min_gap_days", "recency_over_mean_gap",
    "has_repeat", "log_total_amount", "log_mean_amount", "log_last_amount", "last_over_mean_amount",
    "log_total_quantity", "frac_purchases_recent_quarter",
)
N_SUMMARY = len(SUMMARY_NAMES)


def _log1p(x: float) -> float:
    return math.log1p(max(float(x), 0.0))


def summary_features(events: Sequence[dict], as_of: float) -> np.ndarray:
    """RFM + inter-purchase-gap summary of one *normalised* sequence at ``as_of`` (float32[N_SUMMARY])."""
    f = np.zeros(N_SUMMARY, dtype=np.float64)
    if not events:
        return f.astype(np.float32)
    all_ts = np.array([e["ts"] for e in events])
    purchases = [e for e in events if e["type"] == "purchase"]
    p_ts = np.array([e["ts"] for e in purchases])
    n_p = len(purchases)
    age = (as_of - all_ts[0]) / DAY
    f[0] = _log1p(n_p)
    f[1] = _log1p(len(events))
    f[2] = _log1p(len(events) - n_p)
    f[4] = _log1p((as_of - all_ts[-1]) / DAY)
    f[5] = _log1p(age)
    if n_p:
        rec = (as_of - p_ts[-1]) / DAY
        span = (p_ts[-1] - p_ts[0]) / DAY
        f[3] = _log1p(rec)
        f[6] = _log1p(span)
        f[7] = (n_p - 1) / max(age, 1.0)
        f[8] = span / max(age, 1e-9)
        if n_p > 1:
            gaps = np.diff(p_ts) / DAY
            f[9] = _log1p(gaps.mean())
            f[10] = _log1p(gaps.std())
            f[11] = _log1p(gaps[-1])
            f[12] = _log1p(gaps.max())
            f[13] = _log1p(gaps.min())
            f[14] = min(rec / max(gaps.mean(), 1e-3), 100.0)
            f[15] = 1.0
        amounts = np.array([e["amount"] for e in purchases if "amount" in e])
        if len(amounts):
            f[16] = _log1p(max(amounts.sum(), 0.0))
            f[17] = _log1p(max(amounts.mean(), 0.0))
            f[18] = _log1p(max(amounts[-1], 0.0))
            f[19] = amounts[-1] / amounts.mean() if amounts.mean() > 0 else 1.0
        qty = [e["quantity"] for e in purchases if "quantity" in e]
        f[20] = _log1p(max(sum(qty), 0)) if qty else 0.0
        f[21] = float(np.mean(p_ts >= as_of - 0.25 * age * DAY))
    else:
        f[3] = f[5]  # never purchased: "recency" counts from the first event
    return f.astype(np.float32)


def prepare(
    sequences: Sequence[Iterable[dict]],
    as_of: Sequence[float],
    *,
    max_events: int,
    item_buckets: int,
    category_buckets: int,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Normalise, tokenise and summarise many sequences: (token dicts, summary matrix [B, N_SUMMARY])."""
    if len(sequences) != len(as_of):
        raise ValueError(f"{len(sequences)} sequences but {len(as_of)} as_of times")
    toks, summ = [], np.zeros((len(sequences), N_SUMMARY), dtype=np.float32)
    for i, (seq, t) in enumerate(zip(sequences, as_of)):
        norm = normalize_events(seq, float(t))
        toks.append(encode_tokens(norm, float(t), max_events=max_events, item_buckets=item_buckets,
                                  category_buckets=category_buckets))
        summ[i] = summary_features(norm, float(t))
    return toks, summ
