"""The summary features of a whole batch of event records at once: the stream's scoring path for a model that
scores from the summary alone (one that kept its GLM start, ``ChurnScorer.uses_encoder`` False).

:func:`models.churn.features.prepare` normalises and summarises sequence by sequence in plain Python, which
costs a few microseconds per sequence even for a one-event history; at a daily tick the stream scores thousands.
Here the events of the batch become four flat numpy columns, and one compiled loop (numba, ``_summarise``)
filters, sorts, merges and summarises every sequence with the same float operations in the same order as
``features._summary_row``, so the matrix is bit for bit the one ``prepare(..., with_tokens=False)`` gives:

* ``math.log1p`` and ``math.sqrt`` compile to the same libm ``log1p`` and the IEEE square root CPython calls;
  nothing is compiled with ``fastmath`` (no reassociation, no fused multiply-add);
* ``max(x, c)`` / ``min(x, c)`` are written as Python evaluates them (ties and NaN keep Python's choice);
* sums follow numpy's pairwise order (``features._np_sum``): term by term below 8 terms, 8 interleaved partial
  sums up to 128.

Events at or after the scoring time are dropped first, as ``prepare`` drops them, and each sequence's events are
sorted by time, stably, as ``prepare`` sorts them. Sequences the compiled loop does not cover go through
``prepare`` itself: lines of one basket (purchases at one time, merged by ``prepare``) with a NaN or -0.0 amount
or a NaN quantity, non-finite times, infinite amounts, unknown event types, quantities of 2**31 or more, a
purchase at time -0.0, more than 128 events left. An event record is any object with ``ts``, ``type``, ``amount``
and ``quantity`` attributes (the stream's ``RecentEvent``); nothing else of it enters the summary.

The loop (about 1 µs per user, against 40 µs through ``prepare``) compiles on first use, about three seconds,
cached on disk by numba (``__pycache__``, or ``NUMBA_CACHE_DIR``; where no location is writable, a read-only
filesystem, it compiles at each start: :func:`_compiled`); :func:`compile_now` lets a loader thread pay it before
a model serves.
"""
from __future__ import annotations

import logging
import math
from itertools import chain, compress, repeat
from operator import attrgetter
from typing import Any, NamedTuple, Sequence

import numpy as np
from numba import njit

from . import features as F

MIN_BATCH = 1  # the compiled loop beats prepare from one sequence on (28 against 33 µs at one; measured)
MAX_EVENTS = 128  # the sums' pairwise order is emulated up to this many terms (numpy's block size)
_TYPE_CODE = {"click": F.CLICK, "purchase": F.PURCHASE}
log = logging.getLogger(__name__)
# Written out, not read from `features`: numba freezes a compiled function's globals into its cache, and keys the
# cache on this file alone, so a change made in features.py would not reach cached code. The check makes such a
# change fail at import until this line (and with it the cache key) is changed too.
_CLICK, _PURCHASE, _DAY, _N_SUMMARY = 1, 2, 86400.0, 22
if (_CLICK, _PURCHASE, _DAY, _N_SUMMARY) != (F.CLICK, F.PURCHASE, F.DAY, F.N_SUMMARY):  # pragma: no cover
    raise ImportError("summary_batch's constants differ from features': update them here (numba's cache key)")


def summary_of_records(sequences: Sequence[Sequence[Any]], as_of: Sequence[float], *,
                       clicks: bool = True, amounts: bool = True, quantities: bool = True,
                       resolution: float = 0.0) -> np.ndarray:
    """``prepare([[{"ts": e.ts, "type": e.type, "amount": e.amount, "quantity": e.quantity} for e in seq] ...],
    as_of, with_tokens=False)[1]``, bit for bit, raising what it raises. ``clicks`` False: as if the sequences
    held no clicks (a model trained on a log without clicks must not read them: ``ChurnScorer.event_types``).
    ``amounts`` / ``quantities`` False: as if the events had no such field (``ChurnScorer.reads_amounts``).
    ``resolution`` (seconds, 0: none): event times floored to it, ``ts // resolution * resolution`` as
    ``ChurnScorer`` does (a model trained on a log of whole days: ``ChurnScorer.ts_resolution_s``)."""
    view = _View(clicks, amounts, quantities, resolution)
    if len(sequences) != len(as_of):
        raise ValueError(f"{len(sequences)} sequences but {len(as_of)} as_of times")
    try:
        cols = _columns(sequences, as_of, view)
    except (TypeError, ValueError, OverflowError):  # odd values (None, strings, huge ints): the general path
        return _general(sequences, as_of, range(len(sequences)), np.zeros((len(sequences), F.N_SUMMARY)), view)
    out, general = _summarise(*cols, view.clicks, view.amounts)
    return _general(sequences, as_of, np.flatnonzero(general).tolist(), out, view)


def general_rows(sequences: Sequence[Sequence[Any]], as_of: Sequence[float], **view: Any) -> np.ndarray:
    """Per sequence: True where the compiled loop leaves it to ``prepare`` (for tests and benchmarks)."""
    v = _View(**view)
    return _summarise(*_columns(sequences, as_of, v), v.clicks, v.amounts)[1]


def compile_now() -> None:
    """Compile (or load from numba's cache) the summary loop now, not on the first batch scored."""
    summary_of_records([[_Probe()]], [1.0])


class _Probe(NamedTuple):
    ts: float = 0.0
    type: str = "purchase"
    amount: float = 1.0
    quantity: int = 1


_TS, _TYPE, _AMOUNT, _QUANTITY = (attrgetter(name) for name in ("ts", "type", "amount", "quantity"))


class _View(NamedTuple):
    """What of the records a model reads: clicks, amounts, quantities."""

    clicks: bool = True
    amounts: bool = True
    quantities: bool = True
    resolution: float = 0.0  # event times floored to this many seconds (0: as they are)


def _columns(sequences: Sequence[Sequence[Any]], as_of: Sequence[float], view: _View = _View()) -> tuple:
    """(ts, type code, amount, quantity, lengths, as_of): a batch's events back to back, as the loop reads them."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    events = list(chain.from_iterable(sequences))  # one flat list, then C-level maps over it (no nested loops)
    n = len(events)
    code = np.fromiter(map(_TYPE_CODE.get, map(_TYPE, events), repeat(0)), np.int64, n)
    if not view.clicks:  # the clicks go before their fields are read (most of a ring's events, often)
        read = code != F.CLICK
        if not read.all():
            seg = np.repeat(np.arange(len(sequences)), lengths)
            events = list(compress(events, read.tolist()))
            code, n = code[read], len(events)
            lengths = np.bincount(seg[read], minlength=len(sequences))
    ts = F.floor_times(np.fromiter(map(_TS, events), np.float64, n), view.resolution)
    # an absent amount is NaN (the loop skips it, as prepare skips a missing key); an absent quantity counts as 0,
    # which gives the summary prepare gives without one (no quantity total: column 20 is 0)
    amount = np.fromiter(map(_AMOUNT, events), np.float64, n) if view.amounts else np.full(n, np.nan)
    quantity = np.fromiter(map(_QUANTITY, events), np.float64, n) if view.quantities else np.zeros(n)
    when = np.fromiter(as_of, np.float64, len(sequences))
    return ts, code, amount, quantity, lengths, when


def _record_dict(e: Any, view: _View) -> dict:
    d = {"ts": F.floor_times(e.ts, view.resolution), "type": e.type}
    if view.amounts:
        d["amount"] = e.amount
    if view.quantities:
        d["quantity"] = e.quantity
    return d


def _general(sequences, as_of, rows, out: np.ndarray, view: _View = _View()) -> np.ndarray:
    """The rows the compiled loop does not cover, through ``prepare``; ``out`` (float64) with them filled in."""
    out = out.astype(np.float32)
    if len(rows):
        dicts = [[_record_dict(e, view) for e in sequences[i] if view.clicks or e.type != "click"] for i in rows]
        _, summ = F.prepare(dicts, [as_of[i] for i in rows], max_events=0, item_buckets=2, category_buckets=2,
                            with_tokens=False)
        out[list(rows)] = summ
    return out


# ------------------------------------------------------------------------------------------ the compiled loop
def _compiled(fn: Any = None, **options: Any) -> Any:
    """``numba.njit(cache=True, nogil=True)``, or without the cache where numba has no writable place for it: it
    raised at import then, so a worker on a read-only filesystem (or under another user id than the image's)
    could not start (found by review)."""
    if fn is None:
        return lambda f: _compiled(f, **options)
    try:
        return njit(cache=True, nogil=True, **options)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        log.warning("numba cannot cache %s (%s): it is compiled at each start", fn.__name__, exc)
        return njit(nogil=True, **options)(fn)


@_compiled
def _np_sum(a: np.ndarray, n: int) -> float:
    """``features._np_sum`` of ``a[:n]`` (``n`` at most 128): numpy's pairwise order."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    m = n - n % 8
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    for i in range(8, m, 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(m, n):
        res += a[i]
    return res


@_compiled
def _pymax(x: float, c: float) -> float:
    """Python's ``max(x, c)``: ``c`` only where ``c > x`` (keeps -0.0 and NaN as Python does)."""
    return c if c > x else x


@_compiled
def _odd_basket_line(amount: float, quantity: float, amounts: bool) -> bool:
    """A basket line prepare treats its own way: a NaN amount (skipped), -0.0 (read as 0.0), a NaN quantity."""
    if math.isnan(quantity):
        return True
    return amounts and (math.isnan(amount) or (amount == 0.0 and math.copysign(1.0, amount) < 0.0))


@_compiled
def _summarise(ts, code, amount, quantity, lengths, when, clicks, amounts):
    """(summary float64[B, N_SUMMARY], general bool[B]): ``features._summary_row`` of each sequence that the loop
    covers, after ``prepare``'s normalisation (drop events at or after the scoring time, sort stably by time, merge
    a basket's lines); ``general`` marks the sequences left to ``prepare`` (their rows here are zeros)."""
    b = len(lengths)
    out = np.zeros((b, _N_SUMMARY))
    general = np.zeros(b, np.bool_)
    width = 1
    for s in range(b):
        width = max(width, lengths[s])
    e_ts, e_code, e_amount, e_qty = np.empty(width), np.empty(width, np.int64), np.empty(width), np.empty(width)
    p_ts, p_amount, gaps, dev = np.empty(width), np.empty(width), np.empty(width), np.empty(width)
    end = 0
    for s in range(b):
        start, end = end, end + lengths[s]
        as_of = when[s]
        odd = not math.isfinite(as_of)
        # the events before the scoring time, sorted stably by time (insertion: rings are nearly sorted)
        m = 0
        for i in range(start, end):
            t = ts[i]
            if t >= as_of:
                continue
            c, a, q = code[i], amount[i], quantity[i]
            if (not math.isfinite(t) or c == 0 or math.isinf(a) or not abs(q) < 2147483648.0
                    or (c == _PURCHASE and t == 0.0 and math.copysign(1.0, t) < 0.0)):
                odd = True
                break
            if m == MAX_EVENTS:  # one more: prepare's (not sorted here: insertion is quadratic on long rings)
                m += 1
                break
            j = m
            while j > 0 and t < e_ts[j - 1]:
                e_ts[j], e_code[j], e_amount[j], e_qty[j] = e_ts[j - 1], e_code[j - 1], e_amount[j - 1], e_qty[j - 1]
                j -= 1
            e_ts[j], e_code[j], e_amount[j], e_qty[j] = t, c, a, q
            m += 1
        if odd or m > MAX_EVENTS:
            general[s] = True
            continue
        # prepare's normalisation: a purchase at the time of the purchase just before it is a line of its basket
        n = n_p = n_amounts = 0
        qty_total, first_ts, last_ts, last_purchase = 0.0, 0.0, 0.0, False
        for j in range(m):
            t, c = e_ts[j], e_code[j]
            if c == _PURCHASE and last_purchase and t == last_ts:
                if (_odd_basket_line(e_amount[j], e_qty[j], amounts)
                        or _odd_basket_line(e_amount[j - 1], e_qty[j - 1], amounts)):
                    odd = True
                    break
                if amounts:
                    p_amount[n_amounts - 1] = p_amount[n_amounts - 1] + e_amount[j]
                qty_total += math.trunc(e_qty[j])  # a basket line's quantity counts whatever it is
                continue
            if c == _PURCHASE:
                if not math.isnan(e_amount[j]):  # a NaN amount is absent
                    p_amount[n_amounts] = e_amount[j]
                    n_amounts += 1
                q = math.trunc(e_qty[j])
                if q >= 1.0:  # a first line's quantity counts from 1 (prepare: int(q) > 0)
                    qty_total += q
                p_ts[n_p] = t
                n_p += 1
            if n == 0:
                first_ts = t
            last_ts, last_purchase = t, c == _PURCHASE
            n += 1
        if odd:
            general[s] = True
            continue
        if n == 0:
            continue
        f = out[s]
        # features._summary_row, line by line
        age = (as_of - first_ts) / _DAY
        recency_event = (as_of - last_ts) / _DAY
        log_age = math.log1p(_pymax(age, 0.0))
        f[0] = math.log1p(n_p)
        f[1] = math.log1p(n)
        f[2] = math.log1p(n - n_p)
        f[3] = log_age
        f[4] = math.log1p(_pymax(recency_event, 0.0))
        f[5] = log_age
        if n_p == 0:
            continue
        rec = (as_of - p_ts[n_p - 1]) / _DAY
        span = (p_ts[n_p - 1] - p_ts[0]) / _DAY
        f[3] = math.log1p(_pymax(rec, 0.0))
        f[6] = math.log1p(_pymax(span, 0.0))
        f[7] = (n_p - 1) / _pymax(age, 1.0)
        f[8] = span / _pymax(age, 1e-9)
        if n_p > 1:
            n_g = n_p - 1
            for k in range(n_g):
                gaps[k] = (p_ts[k + 1] - p_ts[k]) / _DAY
            mean = _np_sum(gaps, n_g) / n_g
            for k in range(n_g):
                dev[k] = (gaps[k] - mean) * (gaps[k] - mean)
            std = math.sqrt(_np_sum(dev, n_g) / n_g)
            g_max = g_min = gaps[0]  # Python's max() and min(): the first of equals
            for k in range(1, n_g):
                if gaps[k] > g_max:
                    g_max = gaps[k]
                if gaps[k] < g_min:
                    g_min = gaps[k]
            if math.isnan(mean):
                g_max = g_min = math.nan
            f[9] = math.log1p(_pymax(mean, 0.0))
            f[10] = math.log1p(_pymax(std, 0.0))
            f[11] = math.log1p(_pymax(gaps[n_g - 1], 0.0))
            f[12] = math.log1p(_pymax(g_max, 0.0))
            f[13] = math.log1p(_pymax(g_min, 0.0))
            ratio = rec / _pymax(mean, 1e-3)
            f[14] = 100.0 if 100.0 < ratio else ratio  # Python's min(ratio, 100.0)
            f[15] = 1.0
        if n_amounts:
            total = _np_sum(p_amount, n_amounts)
            mean_amount = total / n_amounts
            last_amount = p_amount[n_amounts - 1]
            f[16] = math.log1p(_pymax(total, 0.0))
            f[17] = math.log1p(_pymax(mean_amount, 0.0))
            f[18] = math.log1p(_pymax(last_amount, 0.0))
            f[19] = last_amount / mean_amount if mean_amount > 0 else 1.0
        if qty_total > 0:
            f[20] = math.log1p(qty_total)
        recent_from = as_of - 0.25 * age * _DAY
        recent = 0
        for k in range(n_p):
            if p_ts[k] >= recent_from:
                recent += 1
        f[21] = recent / n_p
    return out, general


@_compiled(error_model="numpy")  # a zero divisor gives inf or NaN, as numpy did
def glm_outputs(summary, low, high, mean, std, weight, bias, temperature, cal_bias, shift, most):
    """(calibrated churn probability, expected purchases) of each summary row through the linear path, one row at
    a time in float64: a user's score never depends on the other rows of its batch (torch's float32 products and
    its vectorised sigmoid round differently with a row's place in the batch). ``np.clip`` and ``np.minimum`` with
    numpy's NaN rule (a NaN value or bound gives NaN), the 22-term dot product in numpy's pairwise order; ``exp``
    is libm's (numpy's SIMD exp differs in the last bit for a few % of arguments, so scores moved by one ulp when
    this replaced the numpy version)."""
    b, k = summary.shape
    p, r = np.empty(b), np.empty(b)
    terms = np.empty(k)
    logit = np.empty(2)
    for i in range(b):
        for o in range(2):
            for j in range(k):
                v = np.float64(summary[i, j])
                v = v if v >= low[j] or math.isnan(v) else low[j]  # np.clip: np.maximum, then np.minimum
                v = v if v <= high[j] or math.isnan(v) else high[j]
                terms[j] = (v - mean[j]) / std[j] * weight[o, j]
            logit[o] = _np_sum(terms, k) + bias[o]
        p[i] = 1.0 / (1.0 + math.exp(-(logit[0] / temperature + cal_bias)))
        rate = math.exp(logit[1] + shift)
        r[i] = rate if rate <= most or math.isnan(rate) else most  # np.minimum
    return p, r
