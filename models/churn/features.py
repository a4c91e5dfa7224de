"""Event-sequence featurisation shared by training, the baselines and the serving scorer.

Everything here works on the same input the stream has at serving time: a list of event dicts
(``ts`` epoch seconds, ``type`` "click"|"purchase", optional ``item``, ``category``, ``amount``,
``quantity``) and a scoring time ``as_of``. Events at or after ``as_of`` are ignored, so a feature
can never see the future of its scoring time.

Two views of a sequence:

* tokens (:func:`encode_tokens`): one token per event, most recent first, after a summary token,
  with bucketised attributes for the transformer;
* a summary vector (:func:`summary_features`): ~20 RFM / inter-purchase-gap features, used by the
  RFM baselines and fed to the model's head next to the pooled transformer output.

:func:`prepare` (the serving path) does both for a whole batch: one pass of plain Python per event
(no per-event numpy), the token arrays computed in one numpy pass over all events of the batch, the
summary with scalar float math. It gives exactly the same arrays as normalising, then calling
:func:`encode_tokens` and :func:`summary_features` sequence by sequence; sums, means and standard
deviations follow numpy's summation order (:func:`_np_sum`) so that every float is bit-identical.

All constants are generic (log-scale time buckets from a minute to two years, log-amount buckets);
nothing depends on a particular data set or cut-off.
"""
from __future__ import annotations

import functools
import itertools
import math
import zlib
from array import array
from typing import Any, Iterable, Sequence

import numpy as np

DAY = 86400.0

# token type ids
PAD, CLICK, PURCHASE, MASK, CLS = 0, 1, 2, 3, 4
N_TYPES = 5
TYPE_IDS = {"click": CLICK, "purchase": PURCHASE}
OPTIONAL_FIELDS = ("amount", "quantity")  # an event's optional numbers: absent (missing or NaN) is allowed

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


def floor_times(ts: Any, resolution: float) -> Any:
    """Event times (a float or a numpy array) floored to ``resolution`` seconds (0: as they are). ``//`` is the same
    operation in Python and numpy (floor_divide), so the vectorised summary and the per-sequence path agree bit for
    bit (``ChurnScorer.ts_resolution_s``)."""
    return ts // resolution * resolution if resolution else ts


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


_BUCKET_CACHES: dict[int, dict] = {}


def _bucket_cache(buckets: int) -> dict:
    """A dict ``id -> stable_bucket(id, buckets)`` for exact ``str`` ids (None and "" map to 0), kept
    across calls (cleared when it grows past 2**18 ids): one dict lookup per event in :func:`prepare`."""
    cache = _BUCKET_CACHES.get(buckets)
    if cache is None or len(cache) > 1 << 18:
        cache = _BUCKET_CACHES[buckets] = {None: 0, "": 0}
    return cache


def _present(value: Any) -> bool:
    """An amount or quantity given: not None and not a (Python float) NaN, the CSV's empty cell."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


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
        amount, q = e.get("amount"), e.get("quantity")
        if out and etype == "purchase" and out[-1]["type"] == "purchase" and float(e["ts"]) == out[-1]["ts"]:
            last = out[-1]  # a NaN on a later line is missing, as on the first (not a NaN total, not a crash)
            if _present(amount):
                last["amount"] = (last.get("amount") or 0.0) + float(amount)
            if _present(q):
                last["quantity"] = (last.get("quantity") or 0) + int(q)
            continue
        ev = {"ts": float(e["ts"]), "type": etype}
        for key in ("item", "category"):
            if e.get(key) not in (None, ""):
                ev[key] = str(e[key])
        # clicks carry no amount or quantity (the stream's event ring stores 0.0 / 0 for them);
        # a quantity <= 0 means "unknown"
        if etype == "purchase":
            if _present(amount):
                ev["amount"] = float(amount)
            if _present(q) and int(q) > 0:
                ev["quantity"] = int(q)
        out.append(ev)
    return out


_NAN = float("nan")
# the row appended after the columns given to _tokens: what the CLS token and absent values read
_SENTINEL = (_NAN, CLS, 0, 0, _NAN, -1)  # ts, type, item, category, amount, quantity


def _tokens(ts_a: np.ndarray, types_a: np.ndarray, items_a: np.ndarray, cats_a: np.ndarray,
            amount_a: np.ndarray, qty_a: np.ndarray, starts: list[int], ends: list[int], windows: list[int],
            as_of: list[float]) -> list[dict[str, np.ndarray]]:
    """Token dicts of many sequences in one numpy pass.

    The columns (float64 ``ts``, ``amount``; int64 ``type``, ``item``, ``category``, ``quantity``) hold
    the events of all sequences back to back, in time order (amount NaN and quantity -1 when absent),
    then one :data:`_SENTINEL` row. Sequence ``i`` owns rows ``starts[i]:ends[i]``; its tokens are the
    last ``windows[i]`` of them (most recent first) after the CLS token; its first row has no gap.
    Every float is computed by the same numpy expression as the per-sequence formulation, element by
    element, so the results are identical to it. The arrays returned are views of a few batch arrays.
    """
    b = len(ends)
    if b == 0:
        return []
    end = np.array(ends, dtype=np.int64)
    win = np.array(windows, dtype=np.int64)
    length = win + 1  # CLS + window
    off = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(length, out=off[1:])
    m = int(off[-1])
    # output row r (sequence s, position k; k=0 is its CLS token) reads source row end[s] - k;
    # CLS rows read the sentinel (the last row), which holds the CLS / "absent" values
    k = np.arange(m, dtype=np.int64) - np.repeat(off[:-1], length)
    src = np.repeat(end, length) - k
    cls_at = off[:-1]
    sentinel = len(ts_a) - 1
    src[cls_at] = sentinel

    prev_a = np.empty_like(ts_a)
    prev_a[0] = _NAN
    prev_a[1:] = ts_a[:-1]
    prev_a[np.array(starts, dtype=np.int64)] = _NAN  # no event before the first one of a sequence
    prev_a[sentinel] = _NAN
    t = ts_a[src]
    gap_days = (t - prev_a[src]) / DAY
    age_days = (np.repeat(np.array(as_of, dtype=np.float64), length) - t) / DAY
    amount = amount_a[src]
    qty = qty_a[src]

    log_amount = np.log1p(np.maximum(np.nan_to_num(amount, nan=0.0), 0.0))
    amount_b = np.where(np.isnan(amount), 0, _bucket_amount(log_amount))
    qty_b = np.where(qty < 0, 0, np.clip(qty, 1, N_QTY_BUCKETS - 1))
    gap0 = np.nan_to_num(gap_days, nan=0.0)
    gap_b = np.where(np.isnan(gap_days), 0, _bucket_time(gap0))
    age_b = _bucket_time(age_days)
    cont = np.stack(
        [
            log_amount,
            np.log1p(np.maximum(qty, 0)).astype(np.float64),
            np.log1p(np.maximum(gap0, 0.0)),
            np.log1p(np.maximum(age_days, 0.0)),
        ],
        axis=1,
    ).astype(np.float32)

    # CLS: time since the last event (age of the most recent token), 0 / absent for an empty window
    has = win > 0
    cls_age = np.zeros(b, dtype=np.int64)
    cls_age[has] = age_b[cls_at[has] + 1]
    age_b[cls_at] = cls_age
    recency = np.where(has, age_days[np.minimum(cls_at + 1, m - 1)], 0.0)
    cls_cont = np.zeros((b, N_CONT), dtype=np.float64)
    cls_cont[:, 3] = [math.log1p(max(r, 0.0)) for r in recency.tolist()]
    cont[cls_at] = cls_cont.astype(np.float32)

    cols = (
        ("type", types_a[src]),
        ("item", items_a[src]),
        ("category", cats_a[src]),
        ("amount_b", amount_b.astype(np.int64, copy=False)),
        ("qty_b", qty_b.astype(np.int64, copy=False)),
        ("gap_b", gap_b.astype(np.int64, copy=False)),
        ("age_b", age_b.astype(np.int64, copy=False)),
        ("cont", cont),
    )
    bounds = off.tolist()
    return [{name: arr[bounds[i]:bounds[i + 1]] for name, arr in cols} for i in range(b)]


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
    n_all, n = len(events), len(ev)
    # row 0 only provides the time of the event before the window (the gap of the oldest token)
    ts = [events[n_all - n - 1]["ts"] if n_all > n else _NAN] + [e["ts"] for e in ev] + [_SENTINEL[0]]
    types = [0] + [TYPE_IDS[e["type"]] for e in ev] + [_SENTINEL[1]]
    items = [0] + [stable_bucket(e.get("item"), item_buckets) for e in ev] + [_SENTINEL[2]]
    cats = [0] + [stable_bucket(e.get("category"), category_buckets) for e in ev] + [_SENTINEL[3]]
    amounts = [_NAN] + [e.get("amount", _NAN) for e in ev] + [_SENTINEL[4]]
    qtys = [-1] + [e.get("quantity", -1) for e in ev] + [_SENTINEL[5]]
    return _tokens(np.array(ts, dtype=np.float64), np.array(types, dtype=np.int64),
                   np.array(items, dtype=np.int64), np.array(cats, dtype=np.int64),
                   np.array(amounts, dtype=np.float64), np.array(qtys, dtype=np.int64),
                   [0], [n + 1], [n], [as_of])[0]


TOKEN_KEYS = ("type", "item", "category", "amount_b", "qty_b", "gap_b", "age_b")


def collate(tokens: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Right-pad a list of token dicts to the longest one; adds ``attention_mask``."""
    lengths = np.fromiter((len(t["type"]) for t in tokens), dtype=np.int64, count=len(tokens))
    length = int(lengths.max())  # ValueError on an empty list, as before
    mask = np.arange(length) < lengths[:, None]  # row-major order = the tokens one after the other
    out = {}
    for k in TOKEN_KEYS:
        out[k] = np.zeros((len(tokens), length), dtype=np.int64)
        out[k][mask] = np.concatenate([t[k] for t in tokens])
    out["cont"] = np.zeros((len(tokens), length, N_CONT), dtype=np.float32)
    out["cont"][mask] = np.concatenate([t["cont"] for t in tokens])
    out["attention_mask"] = mask.astype(np.int64)
    return out


SUMMARY_NAMES = (
    "log_n_purchases", "log_n_events", "log_n_clicks", "log_recency_purchase_days", "log_recency_event_days",
    "log_age_days", "log_purchase_span_days", "repeat_rate_per_day", "span_over_age", "log_mean_gap_days",
    "log_std_gap_days", "log_last_gap_days", "log_max_gap_days", "log_min_gap_days", "recency_over_mean_gap",
    "has_repeat", "log_total_amount", "log_mean_amount", "log_last_amount", "last_over_mean_amount",
    "log_total_quantity", "frac_purchases_recent_quarter",
)
N_SUMMARY = len(SUMMARY_NAMES)


_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE


def _np_sum(a: list[float]) -> float:
    """``float(np.sum(np.array(a)))`` of a list of floats, bit for bit, without building an array:
    numpy adds float64 with pairwise summation (``DOUBLE_pairwise_sum``): plainly from 0.0 below 8
    terms, with 8 interleaved partial sums up to 128 terms, by recursive halving above."""
    n = len(a)
    if n < 8:
        res = 0.0
        for x in a:
            res += x
        return res
    if n <= _PW_BLOCK:
        m = n - n % 8
        r0, r1, r2, r3, r4, r5, r6, r7 = a[:8]
        for i in range(8, m, 8):
            x0, x1, x2, x3, x4, x5, x6, x7 = a[i:i + 8]
            r0 += x0
            r1 += x1
            r2 += x2
            r3 += x3
            r4 += x4
            r5 += x5
            r6 += x6
            r7 += x7
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for x in a[m:]:
            res += x
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _np_sum(a[:n2]) + _np_sum(a[n2:])


def _summary_row(n: int, first_ts: float, last_ts: float, p_ts: list[float], amounts: list[float],
                 qty_total: int | None, as_of: float) -> list[float]:
    """The summary of one normalised sequence from its parts: number of events, first and last event
    times, purchase times, the purchase amounts that are present (in order), the sum of the purchase
    quantities that are present (None when none is). Scalar float math, in numpy's order where numpy
    reduces (sums, means, standard deviation), so the values equal the array formulation's."""
    if not n:
        return [0.0] * N_SUMMARY
    log1p = math.log1p
    n_p = len(p_ts)
    age = (as_of - first_ts) / DAY
    recency_event = (as_of - last_ts) / DAY
    log_age = log1p(max(age, 0.0))
    f = [log1p(n_p), log1p(n), log1p(n - n_p), log_age, log1p(max(recency_event, 0.0)),
         log_age] + [0.0] * (N_SUMMARY - 6)  # f[3] = f[5] unless there is a purchase
    if n_p:
        rec = (as_of - p_ts[-1]) / DAY
        span = (p_ts[-1] - p_ts[0]) / DAY
        f[3] = log1p(max(rec, 0.0))
        f[6] = log1p(max(span, 0.0))
        f[7] = (n_p - 1) / max(age, 1.0)
        f[8] = span / max(age, 1e-9)
        if n_p > 1:
            gaps = [(b - a) / DAY for a, b in itertools.pairwise(p_ts)]
            n_g = len(gaps)
            mean = _np_sum(gaps) / n_g
            std = math.sqrt(_np_sum([(g - mean) * (g - mean) for g in gaps]) / n_g)
            if math.isnan(mean):  # a NaN gap (from -inf times): numpy's max / min propagate NaN
                g_max = g_min = _NAN
            else:
                g_max, g_min = max(gaps), min(gaps)
            last_gap = gaps[-1]
            f[9] = log1p(max(mean, 0.0))
            f[10] = log1p(max(std, 0.0))
            f[11] = log1p(max(last_gap, 0.0))
            f[12] = log1p(max(g_max, 0.0))
            f[13] = log1p(max(g_min, 0.0))
            f[14] = min(rec / max(mean, 1e-3), 100.0)
            f[15] = 1.0
        if amounts:
            total = _np_sum(amounts)
            mean_amount = total / len(amounts)
            last_amount = amounts[-1]
            f[16] = log1p(max(total, 0.0))
            f[17] = log1p(max(mean_amount, 0.0))
            f[18] = log1p(max(last_amount, 0.0))
            f[19] = last_amount / mean_amount if mean_amount > 0 else 1.0
        if qty_total is not None and qty_total > 0:
            f[20] = log1p(qty_total)
        recent_from = as_of - 0.25 * age * DAY
        f[21] = len([t for t in p_ts if t >= recent_from]) / n_p
    return f


def summary_features(events: Sequence[dict], as_of: float) -> np.ndarray:
    """RFM + inter-purchase-gap summary of one *normalised* sequence at ``as_of`` (float32[N_SUMMARY])."""
    if not events:
        return np.zeros(N_SUMMARY, dtype=np.float32)
    purchases = [e for e in events if e["type"] == "purchase"]
    qty = [e["quantity"] for e in purchases if "quantity" in e]
    row = _summary_row(len(events), float(events[0]["ts"]), float(events[-1]["ts"]),
                       [float(e["ts"]) for e in purchases],
                       [float(e["amount"]) for e in purchases if "amount" in e],
                       sum(qty) if qty else None, as_of)
    return np.array(row, dtype=np.float64).astype(np.float32)


def prepare(
    sequences: Sequence[Iterable[dict]],
    as_of: Sequence[float],
    *,
    max_events: int,
    item_buckets: int,
    category_buckets: int,
    with_tokens: bool = True,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Normalise, tokenise and summarise many sequences: (token dicts, summary matrix [B, N_SUMMARY]).

    The same result as ``normalize_events`` then ``encode_tokens`` and ``summary_features`` on each
    sequence, computed in one pass: events are normalised straight into flat columns (no event
    dicts), the tokens of the whole batch come from one numpy pass (:func:`_tokens`).
    ``with_tokens=False`` computes the same summary matrix only (no item/category buckets, no tokens:
    the token list is empty), for a model that scores without its encoder."""
    if len(sequences) != len(as_of):
        raise ValueError(f"{len(sequences)} sequences but {len(as_of)} as_of times")
    # flat columns of all normalised events (array.array: appends as cheap as a list's, no conversion);
    # type, amount and quantity only for the purchases (the rows in p_rows): the rest are clicks
    ts, items, cats = array("d"), array("q"), array("q")
    p_rows, amounts, qtys = array("q"), array("d"), array("q")
    add_ts, add_item, add_cat, add_p_row, add_amount, add_qty = (
        ts.append, items.append, cats.append, p_rows.append, amounts.append, qtys.append)
    item_cache, cat_cache = _bucket_cache(item_buckets), _bucket_cache(category_buckets)
    item_bucket, cat_bucket = item_cache.get, cat_cache.get
    type_id = TYPE_IDS.get
    isnan, purchase = math.isnan, PURCHASE
    starts, ends, windows, times, rows = [], [], [], [], []

    for seq, t_of in zip(sequences, as_of):
        t_of = float(t_of)
        if not isinstance(seq, list):
            seq = list(seq)
        # events before as_of in time order (a stable sort, as in normalize_events); most often the
        # input is already sorted and all in the past (a NaN time takes the general branch)
        seq_ts = [float(e["ts"]) for e in seq]
        total = sum(seq_ts)  # NaN when a time is NaN
        if not math.isnan(total) and (not seq_ts or seq_ts[-1] < t_of) and seq_ts == sorted(seq_ts):
            kept = zip(seq_ts, seq)
        else:
            idx = [i for i, x in enumerate(seq_ts) if x < t_of]
            idx.sort(key=seq_ts.__getitem__)
            kept = [(seq_ts[i], seq[i]) for i in idx]

        # normalise straight into the flat columns, as normalize_events does into dicts
        start = len(ts)
        p_ts: list[float] = []
        p_amounts: list[float] = []  # amounts present on purchases
        qty_total, has_qty = 0, False
        last_p, last_ts, last_amount, last_qty = False, 0.0, None, None
        for t, e in kept:
            etype = e.get("type", "purchase")
            tid = type_id(etype)
            if tid is None:
                raise ValueError(f"unknown event type {etype!r} (expected 'click' or 'purchase')")
            if tid == purchase:
                if last_p and t == last_ts:  # another line of the same basket: merge into the last purchase
                    a = e.get("amount")  # a NaN is missing here as on the basket's first line
                    if a is not None and not (isinstance(a, float) and isnan(a)):
                        new = (last_amount or 0.0) + float(a)
                        if last_amount is None:
                            p_amounts.append(new)
                        else:
                            p_amounts[-1] = new
                        last_amount = amounts[-1] = new
                    q = e.get("quantity")
                    if q is not None and not (isinstance(q, float) and isnan(q)):
                        q = int(q)
                        last_qty = qtys[-1] = (last_qty or 0) + q
                        qty_total += q
                        has_qty = True
                    continue
                a = e.get("amount")
                if a is not None and not (isinstance(a, float) and isnan(a)):
                    last_amount = float(a)
                    p_amounts.append(last_amount)
                    add_amount(last_amount)
                else:
                    last_amount = None
                    add_amount(_NAN)
                q = e.get("quantity")
                if q is not None and not (isinstance(q, float) and isnan(q)) and int(q) > 0:
                    last_qty = int(q)
                    qty_total += last_qty
                    has_qty = True
                    add_qty(last_qty)
                else:
                    last_qty = None
                    add_qty(-1)
                p_ts.append(t)
                add_p_row(len(ts))
                last_p = True
            else:
                last_p = False
            last_ts = t
            add_ts(t)
            if not with_tokens:
                continue
            v = e.get("item")
            try:
                bucket = item_bucket(v)
            except TypeError:  # unhashable
                bucket = None
            if bucket is None:
                bucket = stable_bucket(str(v), item_buckets) if v not in (None, "") else 0
                if type(v) is str:
                    item_cache[v] = bucket
            add_item(bucket)
            v = e.get("category")
            try:
                bucket = cat_bucket(v)
            except TypeError:
                bucket = None
            if bucket is None:
                bucket = stable_bucket(str(v), category_buckets) if v not in (None, "") else 0
                if type(v) is str:
                    cat_cache[v] = bucket
            add_cat(bucket)

        n = len(ts) - start
        starts.append(start)
        ends.append(start + n)
        windows.append(min(n, max_events) if max_events > 0 else 0)
        times.append(t_of)
        rows.append(_summary_row(n, ts[start] if n else 0.0, last_ts, p_ts, p_amounts,
                                 qty_total if has_qty else None, t_of))

    summ = np.array(rows, dtype=np.float64).reshape(len(rows), N_SUMMARY).astype(np.float32)
    if not with_tokens:
        return [], summ
    # the columns for _tokens, with the sentinel row after the events
    n_rows = len(ts)
    for col, value in zip((ts, items, cats), (_SENTINEL[0], _SENTINEL[2], _SENTINEL[3])):
        col.append(value)
    p_at = np.frombuffer(p_rows, dtype=np.int64)
    types_a = np.full(n_rows + 1, CLICK, dtype=np.int64)
    types_a[p_at] = PURCHASE
    amount_a = np.full(n_rows + 1, _NAN, dtype=np.float64)
    amount_a[p_at] = np.frombuffer(amounts, dtype=np.float64)
    qty_a = np.full(n_rows + 1, -1, dtype=np.int64)
    qty_a[p_at] = np.frombuffer(qtys, dtype=np.int64)
    types_a[n_rows], amount_a[n_rows], qty_a[n_rows] = _SENTINEL[1], _SENTINEL[4], _SENTINEL[5]
    toks = _tokens(np.frombuffer(ts, dtype=np.float64), types_a, np.frombuffer(items, dtype=np.int64),
                   np.frombuffer(cats, dtype=np.int64), amount_a, qty_a, starts, ends, windows, times)
    return toks, summ
