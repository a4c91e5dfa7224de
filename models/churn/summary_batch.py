"""The summary features of a whole batch of event records at once: the stream's scoring path for a model that
scores from the summary alone (one that kept its GLM start, ``ChurnScorer.uses_encoder`` False).

:func:`models.churn.features.prepare` normalises and summarises sequence by sequence in plain Python, which
costs a few microseconds per sequence even for a one-event history; at a daily tick the stream scores thousands.
Here the events of the batch become four flat numpy columns and every feature is computed for all sequences at
once, with the same float operations in the same order as ``features._summary_row``, so the matrix is bit for
bit the one ``prepare(..., with_tokens=False)`` gives:

* elementwise IEEE operations (``+ - * /``, ``sqrt``, comparisons) round the same in numpy as in Python;
* ``log1p`` is numpy's where it rounds to the same float32 as ``math.log1p`` (they differ in the last float64 bit
  for some inputs; ``_log1p``), ``math.log1p`` elsewhere;
* ``max(x, c)`` / ``min(x, c)`` keep Python's choice for ties and NaN (``np.maximum`` turns ``-0.0`` into ``0.0``);
* sums follow numpy's pairwise order (``features._np_sum``): term by term below 8 terms, 8 interleaved partial
  sums up to 128, with the padding masked so that no extra ``+ 0.0`` touches a partial sum.

Events at or after the scoring time are dropped first, as ``prepare`` drops them, and each sequence's events are
sorted by time, stably, as ``prepare`` sorts them. Sequences this fast path does not cover go through ``prepare``
itself: lines of one basket (purchases at
one time, merged by ``prepare``) with a NaN or -0.0 amount or a NaN quantity, non-finite times or amounts,
unknown event types, more than 128 events left. An event record is any object with ``ts``, ``type``, ``amount`` and
``quantity`` attributes (the stream's ``RecentEvent``); nothing else of it enters the summary.
"""
from __future__ import annotations

import math
from itertools import chain, compress, repeat
from operator import attrgetter
from typing import Any, NamedTuple, Sequence

import numpy as np

from . import features as F

MIN_BATCH = 32  # below this many sequences the per-sequence path is faster (numpy's cost per call; measured)
MAX_EVENTS = 128  # the sums' pairwise order is emulated up to this many terms (numpy's block size)
_TYPE_CODE = {"click": F.CLICK, "purchase": F.PURCHASE}


class _Columns(NamedTuple):
    """A batch's events back to back (``seg``: the sequence of each), as the fast path reads them."""

    ts: np.ndarray
    code: np.ndarray  # F.CLICK, F.PURCHASE, 0 for any other type
    amount: np.ndarray
    quantity: np.ndarray
    lengths: np.ndarray
    when: np.ndarray  # as_of per sequence
    seg: np.ndarray
    purchase: np.ndarray
    merged: np.ndarray  # a purchase line at the time of the purchase just before it: its basket (prepare merges)


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
    general = _not_covered(cols)
    with np.errstate(all="ignore"):
        out = _summaries(*_merge_baskets(cols), cols.when)
    return _general(sequences, as_of, np.flatnonzero(general).tolist(), out, view)


_TS, _TYPE, _AMOUNT, _QUANTITY = (attrgetter(name) for name in ("ts", "type", "amount", "quantity"))


class _View(NamedTuple):
    """What of the records a model reads: clicks, amounts, quantities."""

    clicks: bool = True
    amounts: bool = True
    quantities: bool = True
    resolution: float = 0.0  # event times floored to this many seconds (0: as they are)


def _columns(sequences: Sequence[Sequence[Any]], as_of: Sequence[float], view: _View = _View()) -> _Columns:
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    events = list(chain.from_iterable(sequences))  # one flat list, then C-level maps over it (no nested loops)
    n = len(events)
    code = np.fromiter(map(_TYPE_CODE.get, map(_TYPE, events), repeat(0)), np.int64, n)
    seg = np.repeat(np.arange(len(sequences)), lengths)
    if not view.clicks:  # the clicks go before their fields are read (most of a ring's events, often)
        read = code != F.CLICK
        if not read.all():
            events = list(compress(events, read.tolist()))
            code, seg, n = code[read], seg[read], len(events)
            lengths = np.bincount(seg, minlength=len(sequences))
    ts = np.fromiter(map(_TS, events), np.float64, n)
    ts = F.floor_times(ts, view.resolution)
    # an absent amount is NaN (not counted, as prepare skips a missing key); an absent quantity counts as 0, which
    # gives the summary prepare gives without one (no quantity total: column 20 is 0)
    amount = np.fromiter(map(_AMOUNT, events), np.float64, n) if view.amounts else np.full(n, np.nan)
    quantity = np.fromiter(map(_QUANTITY, events), np.float64, n) if view.quantities else np.zeros(n)
    when = np.fromiter(as_of, np.float64, len(sequences))
    # prepare drops the events at or after the scoring time before anything else reads them: the stream's ticks
    # fall on the times of the events that cross them (CDNOW's midnights), so a sixth of the rings hold one. A
    # non-finite time stays, for the general path (prepare's choice for NaN and infinities is its own).
    kept = ~(ts >= when[seg])
    if not kept.all():
        ts, code, amount, quantity, seg = ts[kept], code[kept], amount[kept], quantity[kept], seg[kept]
        lengths = np.bincount(seg, minlength=len(sequences))
    # prepare sorts each sequence's events by time, stably; so does this, where some are out of order (a stream
    # ring holds events in arrival order: with 2 % late events, three rings in four had one, and all of those
    # took the per-sequence path at ~40 µs a user; found by a soak). A NaN time leaves the order to the general
    # path, which that sequence takes anyway (``_not_covered``)
    if len(ts) > 1 and ((seg[1:] == seg[:-1]) & (ts[1:] < ts[:-1])).any():
        order = np.lexsort((ts, seg))  # stable: events at one time keep their order, as in Python's sort
        ts, code, amount, quantity = ts[order], code[order], amount[order], quantity[order]
    purchase = code == F.PURCHASE
    merged = np.zeros(len(ts), bool)
    merged[1:] = purchase[1:] & purchase[:-1] & (seg[1:] == seg[:-1]) & (ts[1:] == ts[:-1])
    return _Columns(ts, code, amount, quantity, lengths, when, seg, purchase, merged)


def _merge_baskets(c: _Columns):
    """The normalised events (one per basket) and each sequence's quantity total, as ``prepare`` counts them:
    a basket's amount is its lines' amounts added in order; a line's quantity counts when it is at least 1,
    a merged line's whatever it is (``prepare``'s rule)."""
    ts, purchase, amount, seg, merged = c.ts, c.purchase, c.amount, c.seg, c.merged
    q = np.trunc(c.quantity)
    counted = np.where(merged, q, np.where(purchase & (q >= 1), q, 0.0))  # clicks' quantities do not count
    qty_total = np.bincount(seg, weights=counted, minlength=len(c.lengths))  # whole numbers below 2**31: exact
    if not merged.any():
        return ts, purchase, amount, seg, qty_total
    line = np.arange(len(ts))
    head = np.maximum.accumulate(np.where(merged, 0, line))
    position = line - head
    basket = amount.copy()
    for p in range(1, int(position.max()) + 1):
        at = np.flatnonzero(position == p)
        basket[head[at]] = basket[head[at]] + amount[at]
    keep = ~merged
    return ts[keep], purchase[keep], basket[keep], seg[keep], qty_total


def _record_dict(e: Any, view: _View) -> dict:
    d = {"ts": F.floor_times(e.ts, view.resolution), "type": e.type}
    if view.amounts:
        d["amount"] = e.amount
    if view.quantities:
        d["quantity"] = e.quantity
    return d


def _general(sequences, as_of, rows, out: np.ndarray, view: _View = _View()) -> np.ndarray:
    """The rows the fast path does not cover, through ``prepare``; ``out`` (float64) with them filled in."""
    if len(rows):
        dicts = [[_record_dict(e, view) for e in sequences[i] if view.clicks or e.type != "click"] for i in rows]
        _, summ = F.prepare(dicts, [as_of[i] for i in rows], max_events=0, item_buckets=2, category_buckets=2,
                            with_tokens=False)
        out = out.astype(np.float32)
        out[list(rows)] = summ
        return out
    return out.astype(np.float32)


def _not_covered(c: _Columns) -> np.ndarray:
    """Per sequence: True where the fast path would not reproduce ``prepare`` exactly."""
    ts, amount, quantity, seg, merged = c.ts, c.amount, c.quantity, c.seg, c.merged
    # a purchase at time -0.0: np.maximum/minimum.reduceat do not keep Python's max/min choice between -0.0 and
    # 0.0 in the gap columns (found by review; only a log with times at exactly zero has one)
    bad_event = ~np.isfinite(ts) | (c.code == 0) | np.isinf(amount) | ~(ts < c.when[seg]) \
        | ~(np.abs(quantity) < 2**31) | ((ts == 0.0) & np.signbit(ts) & c.purchase)
    # basket lines: prepare adds a NaN amount or fails on a NaN quantity there, and reads a -0.0 amount as 0.0
    in_basket = merged.copy()
    in_basket[:-1] |= merged[1:]
    bad_event |= in_basket & (np.isnan(amount) | ((amount == 0.0) & np.signbit(amount)) | np.isnan(quantity))
    general = (c.lengths > MAX_EVENTS) | ~np.isfinite(c.when)
    general[seg[bad_event]] = True  # (events out of time order are sorted by ``_columns``; a NaN time is here)
    return general


def _pymax(x: np.ndarray, c: float) -> np.ndarray:
    """Python's ``max(x, c)`` elementwise: ``c`` only where ``c > x`` (keeps -0.0 and NaN as Python does)."""
    return np.where(c > x, c, x)


_SLACK = 2.0**-48  # relative: at least 16 float64 ulps, against numpy's and libm's log1p at most 1 ulp apart


def _float32_unsure(r: np.ndarray) -> np.ndarray:
    """Where a value within ``_SLACK`` of ``r`` might round to another float32 than ``r`` does (a float32
    rounding boundary near it), and where ``r`` is NaN or infinite. (A zero is sure: log1p(±0) is ±0 in both, as
    IEEE says.)"""
    slack = np.abs(r) * _SLACK
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, unsure
        return ~((r - slack).astype(np.float32) == (r + slack).astype(np.float32))


def _log1p(x: np.ndarray) -> np.ndarray:
    """``math.log1p`` elementwise as far as the float32 summary can tell. numpy's log1p (SIMD) differs from
    libm's, which ``features._summary_row`` calls, in the last bit on ~3 % of inputs (at most 1 ulp, measured), and
    calling ``math.log1p`` per element cost a quarter of the batch. The summary is rounded to float32, and
    rounding is monotonic: where everything within 16 ulps of numpy's value rounds to one float32, libm's value
    rounds to it too. Elsewhere (a float32 boundary within reach, about 1 in 10^7 values; NaN, infinity) libm's
    own value is taken. Every log1p result goes into the summary as it is, with no further arithmetic."""
    r = np.log1p(x)
    unsure = np.flatnonzero(_float32_unsure(r))
    if len(unsure):
        r[unsure] = [math.log1p(v) for v in x[unsure].tolist()]
    return r


_LOG1P_OF_COUNTS = np.array([math.log1p(k) for k in range(MAX_EVENTS + 1)])


def _log1p_count(k: np.ndarray) -> np.ndarray:
    """``math.log1p`` of whole numbers 0..``MAX_EVENTS`` (event counts), by table; longer sequences are
    computed by ``prepare`` (their values here are placeholders)."""
    return _LOG1P_OF_COUNTS[np.minimum(k, MAX_EVENTS)]


def _segment_sums(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``features._np_sum`` of each segment of ``values`` (segments back to back, ``lengths`` each, at most
    ``MAX_EVENTS``): numpy's pairwise summation order, emulated across all segments at once."""
    out = np.zeros(len(lengths))
    width = int(lengths.max(initial=0))
    if width == 0:
        return out
    padded = np.zeros((len(lengths), width))
    padded[np.arange(width) < lengths[:, None]] = values
    short = lengths < 8
    if short.any():  # from 0.0, term by term; the zero padding is exact (the sum is never -0.0)
        part, total = padded[short], np.zeros(int(short.sum()))
        for j in range(min(width, 7)):
            total = total + part[:, j]
        out[short] = total
    if not short.all():  # 8 interleaved partial sums over whole blocks of 8, then the rest term by term
        long_rows = ~short
        part, n = padded[long_rows], lengths[long_rows]
        whole = n - n % 8
        acc = part[:, :8].copy()
        for start in range(8, int(whole.max()), 8):
            acc = np.where((start < whole)[:, None], acc + part[:, start:start + 8], acc)
        total = (((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3]))
                 + ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7])))
        rows = np.arange(len(part))
        for j in range(7):
            col = np.minimum(whole + j, width - 1)
            total = np.where(j < n - whole, total + part[rows, col], total)
        out[long_rows] = total
    return out


class _LogColumns:
    """The summary's log1p columns, computed together by :meth:`write` in one ``_log1p`` call (its cost was
    mostly per call: a dozen calls per batch). Writes land in the order they were put, as plain assignments would."""

    def __init__(self, f: np.ndarray) -> None:
        self.f = f
        self.puts: list[tuple[Any, Any, np.ndarray]] = []

    def put(self, rows: Any, cols: int | tuple[int, ...], x: np.ndarray) -> None:
        """``f[rows, col] = log1p(x)`` for each of ``cols``, at :meth:`write`."""
        self.puts.append((rows, cols, x))

    def write(self) -> None:
        if not self.puts:
            return
        logs = _log1p(np.concatenate([x for _, _, x in self.puts]))
        at = 0
        for rows, cols, x in self.puts:
            for col in (cols,) if isinstance(cols, int) else cols:
                self.f[rows, col] = logs[at:at + len(x)]
            at += len(x)
        self.puts.clear()


def _summaries(ts, purchase, amount, seg, qty_total, when) -> np.ndarray:
    """``features._summary_row`` of every sequence from its normalised events, assuming each sequence is covered
    (``_not_covered``). Float64, equal to it once rounded to float32 (the log1p columns can differ in the last
    float64 bit: ``_log1p``)."""
    day = F.DAY
    b = len(when)
    out = np.zeros((b, F.N_SUMMARY))
    n = np.bincount(seg, minlength=b)
    bounds = np.zeros(b + 1, np.int64)
    np.cumsum(n, out=bounds[1:])
    has = n > 0
    if not has.any():
        return out
    first_ts = np.where(has, ts[np.minimum(bounds[:-1], len(ts) - 1)], 0.0)  # some event exists: len(ts) > 0
    last_ts = ts[np.maximum(bounds[1:] - 1, 0)]  # (rows without events are zeroed at the end)
    p_at = np.flatnonzero(purchase)
    p_ts, p_seg = ts[p_at], seg[p_at]
    n_p = np.bincount(p_seg, minlength=b)
    p_bounds = np.zeros(b + 1, np.int64)
    np.cumsum(n_p, out=p_bounds[1:])
    has_p = n_p > 0

    age = (when - first_ts) / day
    recency_event = (when - last_ts) / day
    f = out
    logs = _LogColumns(f)
    f[:, 0], f[:, 1], f[:, 2] = _log1p_count(n_p), _log1p_count(n), _log1p_count(n - n_p)
    logs.put(slice(None), (3, 5), _pymax(age, 0.0))
    logs.put(slice(None), 4, _pymax(recency_event, 0.0))
    if has_p.any():
        r = np.flatnonzero(has_p)
        first_p, last_p = p_ts[p_bounds[r]], p_ts[p_bounds[r + 1] - 1]
        rec = (when[r] - last_p) / day
        span = (last_p - first_p) / day
        logs.put(r, 3, _pymax(rec, 0.0))
        logs.put(r, 6, _pymax(span, 0.0))
        f[r, 7] = (n_p[r] - 1) / _pymax(age[r], 1.0)
        f[r, 8] = span / _pymax(age[r], 1e-9)
        _gap_features(f, logs, r, rec, p_ts, p_seg, n_p)
        _amount_features(f, logs, amount[p_at], p_seg, b)
        with_qty = np.flatnonzero(has_p & (qty_total > 0))
        logs.put(with_qty, 20, qty_total[with_qty])
        recent_from = when - 0.25 * age * day
        recent = np.bincount(p_seg, weights=(p_ts >= recent_from[p_seg]).astype(np.float64), minlength=b)
        f[r, 21] = recent[r] / n_p[r]
    logs.write()
    f[~has] = 0.0
    return out


def _gap_features(f: np.ndarray, logs: _LogColumns, rows: np.ndarray, rec: np.ndarray, p_ts, p_seg, n_p) -> None:
    """Columns 9-15 for the sequences with two purchases or more (``rows``: those with one or more, ``rec``
    their purchase recency in days)."""
    two = n_p[rows] > 1
    if not two.any():
        return
    r, rec = rows[two], rec[two]
    pair = p_seg[1:] == p_seg[:-1]
    gaps = ((p_ts[1:] - p_ts[:-1]) / F.DAY)[pair]  # the purchase gaps of every sequence, in order
    n_g = n_p[r] - 1
    starts = np.zeros(len(n_p) + 1, np.int64)
    np.cumsum(np.maximum(n_p - 1, 0), out=starts[1:])
    mean = _segment_sums(gaps, n_g) / n_g
    dev = gaps - np.repeat(mean, n_g)
    std = np.sqrt(_segment_sums(dev * dev, n_g) / n_g)
    g_max = np.maximum.reduceat(gaps, starts[r])
    g_min = np.minimum.reduceat(gaps, starts[r])
    last_gap = gaps[starts[r + 1] - 1]
    for col, x in ((9, mean), (10, std), (11, last_gap), (12, g_max), (13, g_min)):
        logs.put(r, col, _pymax(x, 0.0))
    ratio = rec / _pymax(mean, 1e-3)
    f[r, 14] = np.where(100.0 < ratio, 100.0, ratio)  # Python's min(ratio, 100.0)
    f[r, 15] = 1.0


def _amount_features(f: np.ndarray, logs: _LogColumns, p_amount: np.ndarray, p_seg: np.ndarray, b: int) -> None:
    """Columns 16-19 from the amounts present (not NaN) on each sequence's purchases."""
    present = ~np.isnan(p_amount)
    values, seg = p_amount[present], p_seg[present]
    count = np.bincount(seg, minlength=b)
    r = np.flatnonzero(count)
    if not len(r):
        return
    starts = np.zeros(b + 1, np.int64)
    np.cumsum(count, out=starts[1:])
    total = _segment_sums(values, count[r])
    mean = total / count[r]
    last = values[starts[r + 1] - 1]
    for col, x in ((16, total), (17, mean), (18, last)):
        logs.put(r, col, _pymax(x, 0.0))
    f[r, 19] = np.where(mean > 0, last / mean, 1.0)
