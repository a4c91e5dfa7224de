"""The batched featurisation (models/churn/features.py) gives bit-identical arrays to the per-sequence
reference it replaced (tests/models/churn/features_reference.py, a verbatim copy of the old module)."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.churn import features as F

from . import features_reference as R
from .helpers import CUTOFF, cdnow_sample


def _bits(a: np.ndarray) -> bytes:
    """The bytes of an array, every NaN made the same one: NaN where the reference has NaN is all that
    counts (numpy's max() picks the sign of the NaN it returns in its own way); -0.0 still differs from 0.0."""
    a = np.array(a)  # a copy
    if a.dtype.kind == "f":
        a[np.isnan(a)] = np.nan
    return a.tobytes()


def assert_same_tokens(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for k, want in expected.items():
        have = got[k]
        assert have.dtype == want.dtype, k
        assert have.shape == want.shape, k
        assert _bits(have) == _bits(want), (k, want, have)  # bit for bit (-0.0 included)


def assert_same_prepared(expected, got) -> None:
    (want_toks, want_summ), (have_toks, have_summ) = expected, got
    assert len(have_toks) == len(want_toks)
    for want, have in zip(want_toks, have_toks):
        assert_same_tokens(want, have)
    assert have_summ.dtype == want_summ.dtype == np.float32
    assert have_summ.shape == want_summ.shape
    assert _bits(have_summ) == _bits(want_summ), (want_summ, have_summ)


def outcome(fn, *args, **kw):
    """(result, None) or (None, exception type): both implementations must fail alike on bad input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf / NaN amounts make numpy warn
        try:
            return fn(*args, **kw), None
        except (ValueError, TypeError, OverflowError) as exc:
            return None, type(exc)


# ------------------------------------------------------------------------------------------------
# random raw event sequences: clicks and purchases, repeated timestamps (same-ts purchase lines are
# merged), absent / None / "" / NaN fields, numpy scalars, unsorted input, as_of anywhere
# ------------------------------------------------------------------------------------------------
DAY = 86400.0
TIMES = [0.0, 3600.0, DAY, 2.5 * DAY, 40 * DAY, 41 * DAY, 400 * DAY]

ts_st = st.one_of(st.sampled_from(TIMES), st.floats(-1e7, 4e7, allow_nan=False, allow_infinity=False),
                  st.integers(0, 4 * 10**7), st.builds(np.float64, st.sampled_from(TIMES)),
                  st.just(float("-inf")))
id_st = st.one_of(st.none(), st.just(""), st.sampled_from(["a", "b", "i17", "cat/ü", "nan"]), st.integers(0, 3),
                  st.booleans(), st.just(1.0), st.just(float("nan")), st.builds(np.str_, st.sampled_from(["", "a", "x"])))
amount_st = st.one_of(st.none(), st.floats(-50, 5000), st.just(0.0), st.just(-0.0), st.just(float("nan")),
                      st.just(float("inf")), st.integers(-3, 100), st.builds(np.float64, st.floats(0, 1e4)),
                      st.just(np.float32("nan")), st.floats(1e300, 1e308))
qty_st = st.one_of(st.none(), st.integers(-2, 12), st.sampled_from([0.0, 2.0, 2.7, -1.5, float("nan")]),
                   st.builds(np.int64, st.integers(0, 5)))
event_st = st.fixed_dictionaries(
    {"ts": ts_st},
    optional={"type": st.sampled_from(["click", "purchase", "purchase"]), "item": id_st, "item_id": id_st,
              "category": id_st, "amount": amount_st, "quantity": qty_st},
)


@st.composite
def sequence_and_as_of(draw):
    events = draw(st.lists(event_st, max_size=90))
    order = draw(st.sampled_from(["as_given", "sorted", "reversed"]))
    if order != "as_given":
        events.sort(key=lambda e: float(e["ts"]), reverse=order == "reversed")
    times = sorted({float(e["ts"]) for e in events} - {float("-inf")}) or [0.0]
    where = draw(st.sampled_from(["after", "at_event", "between", "before", "far_after", "inf"]))
    if where == "after":
        as_of = times[-1] + draw(st.sampled_from([1.0, 3600.0, 30 * DAY]))
    elif where == "at_event":  # an event exactly at as_of is in the future
        as_of = draw(st.sampled_from(times))
    elif where == "between":
        as_of = draw(st.floats(times[0], times[-1] + 1.0))
    elif where == "before":
        as_of = times[0] - 1.0
    elif where == "far_after":
        as_of = times[-1] + 5000 * DAY
    else:
        as_of = float("inf")
    container = draw(st.sampled_from([list, tuple]))
    return container(events), draw(st.sampled_from([as_of, np.float64(as_of)])) if np.isfinite(as_of) else as_of


config_st = st.fixed_dictionaries({
    "max_events": st.sampled_from([64, 8, 3, 1, 0, -1]),
    "item_buckets": st.sampled_from([4096, 64, 2]),
    "category_buckets": st.sampled_from([256, 16, 2]),
})


def both_outcomes(reference, candidate, batch, cfg):
    """(reference's result, candidate's result) on one drawn batch, after checking that both raise alike;
    (None, None) when both raised."""
    seqs = [s for s, _ in batch]
    as_of = [t for _, t in batch]
    want, want_err = outcome(reference, seqs, as_of, **cfg)
    got, got_err = outcome(candidate, seqs, as_of, **cfg)
    assert got_err == want_err
    return want, got


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(sequence_and_as_of(), max_size=6), cfg=config_st)
def test_prepare_equals_the_per_sequence_reference(batch, cfg):
    want, got = both_outcomes(R.prepare, F.prepare, batch, cfg)
    if want is not None:
        assert_same_prepared(want, got)


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(sequence_and_as_of(), max_size=6), cfg=config_st)
def test_summary_only_equals_the_full_preparation(batch, cfg):
    """What a model that scores without its encoder featurises: the same summaries, the same errors."""
    want, got = both_outcomes(F.prepare, functools.partial(F.prepare, with_tokens=False), batch, cfg)
    if want is not None:
        assert got[0] == []
        np.testing.assert_array_equal(got[1], want[1])


@settings(max_examples=150, deadline=None)
@given(item=sequence_and_as_of(), cfg=config_st)
def test_public_per_sequence_functions_equal_the_reference(item, cfg):
    """normalize_events, encode_tokens, summary_features and collate (used by training) are unchanged too."""
    seq, as_of = item
    norm, err = outcome(R.normalize_events, seq, float(as_of))
    got_norm, got_err = outcome(F.normalize_events, seq, float(as_of))
    assert got_err == err and repr(got_norm) == repr(norm)  # repr: NaN amounts compare equal
    if err is not None:
        return
    for cut in (norm, norm[: len(norm) // 2]):  # also a prefix, as pre-training encodes
        want, want_err = outcome(R.encode_tokens, cut, float(as_of), **cfg)
        got, got_err = outcome(F.encode_tokens, cut, float(as_of), **cfg)
        assert got_err == want_err
        if want_err is None:
            assert_same_tokens(want, got)
        want, _ = outcome(R.summary_features, cut, float(as_of))
        got, _ = outcome(F.summary_features, cut, float(as_of))
        assert got.dtype == want.dtype and _bits(got) == _bits(want)


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(sequence_and_as_of(), min_size=1, max_size=8), cfg=config_st)
def test_collate_equals_the_reference(batch, cfg):
    toks, _ = outcome(R.prepare, [s for s, _ in batch], [t for _, t in batch], **cfg)
    if toks is None:
        return
    toks = toks[0]
    want, got = R.collate(toks), F.collate(toks)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        assert _bits(got[k]) == _bits(want[k]), k
        assert got[k].flags.c_contiguous and got[k].flags.writeable  # torch.from_numpy needs both


ZOO = [  # hand-picked corner cases of normalize_events, each compared with the reference
    [{"ts": 5.0, "type": "purchase", "amount": -0.0}, {"ts": 5.0, "type": "purchase", "amount": -0.0}],
    [{"ts": 5.0, "type": "purchase", "amount": float("nan"), "quantity": 0},
     {"ts": 5.0, "type": "purchase", "amount": 2.5, "quantity": 0}, {"ts": 5.0, "type": "purchase", "quantity": -4}],
    [{"ts": 5.0, "type": "purchase", "amount": np.float32("nan"), "quantity": 2.7},
     {"ts": 5.0, "type": "purchase", "amount": float("nan")}, {"ts": 6.0, "type": "purchase", "amount": 3.0}],
    [{"ts": 1.0, "type": "purchase", "amount": 1.0}, {"ts": 1.0, "type": "click", "amount": 9.0, "quantity": 9},
     {"ts": 1.0, "type": "purchase", "amount": 2.0, "quantity": 1}, {"ts": 1.0, "amount": 4.0}],
    [{"ts": 3.0, "item": 1, "category": True}, {"ts": 2.0, "item": True, "category": 1.0},
     {"ts": 2.0, "item": np.str_("a"), "category": "a"}, {"ts": 1.0, "item": "1", "category": np.str_("")},
     {"ts": 4.0, "item": float("nan"), "category": "nan"}, {"ts": 9.0, "type": "click"}],
    [{"ts": 9.0}, {"ts": 2.0}, {"ts": 7.0, "type": "click"}, {"ts": 2.0, "amount": 5}, {"ts": 10.0}],
    [{"ts": float("-inf"), "amount": 1.0}, {"ts": float("-inf"), "type": "click"}, {"ts": float("-inf")},
     {"ts": float("nan")}, {"ts": 0.0, "amount": 1e308}, {"ts": 0.5, "amount": float("inf"), "quantity": np.int64(3)}],
]


@pytest.mark.parametrize("as_of", [9.0, 10.0, 2.0, float("inf")])
def test_corner_cases_equal_the_reference(as_of):
    kw = {"max_events": 3, "item_buckets": 64, "category_buckets": 16}
    assert_same_prepared(outcome(R.prepare, ZOO, [as_of] * len(ZOO), **kw)[0],
                         outcome(F.prepare, ZOO, [as_of] * len(ZOO), **kw)[0])


def test_collate_of_nothing_fails_like_before():
    with pytest.raises(ValueError):
        R.collate([])
    with pytest.raises(ValueError):
        F.collate([])


def test_bad_event_type_and_length_mismatch_fail_like_before():
    kw = {"max_events": 8, "item_buckets": 64, "category_buckets": 16}
    seq = [{"ts": 1.0, "type": "click"}, {"ts": 2.0, "type": "view"}]
    for fn in (R.prepare, F.prepare):
        with pytest.raises(ValueError, match="unknown event type 'view'"):
            fn([seq], [10.0], **kw)
        assert fn([seq], [2.0], **kw)[1].shape == (1, F.N_SUMMARY)  # the bad event is in the future: ignored
        with pytest.raises(ValueError, match="2 sequences but 1 as_of"):
            fn([seq, seq], [10.0], **kw)
    # regression: a NaN quantity on a basket's second line raised (int(nan)) and a NaN amount made the basket's
    # amount NaN, so training failed, depending on row order; a NaN is missing there as on a first line
    basket = [{"ts": 1.0, "type": "purchase", "quantity": 1, "amount": 5.0},
              {"ts": 1.0, "type": "purchase", "quantity": float("nan"), "amount": float("nan")}]
    assert_same_prepared(R.prepare([basket], [5.0], **kw), F.prepare([basket], [5.0], **kw))
    assert R.normalize_events(basket, 5.0) == [{"ts": 1.0, "type": "purchase", "amount": 5.0, "quantity": 1}]
    assert np.isfinite(F.prepare([basket], [5.0], **kw)[1]).all()


def test_empty_batch_and_empty_sequences():
    kw = {"max_events": 8, "item_buckets": 64, "category_buckets": 16}
    assert_same_prepared(R.prepare([], [], **kw), F.prepare([], [], **kw))
    assert_same_prepared(R.prepare([[], []], [1.0, 2.0], **kw), F.prepare([[], []], [1.0, 2.0], **kw))
    # the token arrays of one call do not share memory: writing one leaves the others alone
    toks, _ = F.prepare([[{"ts": 0.0, "type": "click"}]] * 3, [5.0] * 3, **kw)
    toks[0]["type"][:] = 99
    assert toks[1]["type"].tolist() == [F.CLS, F.CLICK]


@given(special=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")), st.floats(1e300, 1e308)),
                       max_size=20),
       n=st.integers(0, 600), seed=st.integers(0, 2**32 - 1))
def test_np_sum_is_numpys_summation_order(special, n, seed):
    rng = np.random.default_rng(seed)
    values = (rng.lognormal(0, 3, n) * rng.choice([-1.0, 1.0], n)).tolist()
    values[: len(special)] = special[:n]
    with np.errstate(all="ignore"):
        want = np.array(values, dtype=np.float64).sum()
    assert np.float64(F._np_sum(values)).tobytes() == want.tobytes() or (np.isnan(want) and np.isnan(F._np_sum(values)))


def stream_rings(n: int, seed: int) -> tuple[list[list[dict]], list[float]]:
    """Rings as the stream worker sends them: up to 64 events (some out of order), clicks with amount 0.0
    and quantity 0, an extra item_id key, random float times, same-time basket lines now and then."""
    rng = np.random.default_rng(seed)
    seqs, as_of = [], []
    for _ in range(n):
        k = int(rng.integers(0, 65))
        ts = np.sort(1.7e9 - rng.exponential(20 * DAY, k))
        seq = []
        for t in ts:
            item = f"i{rng.integers(3000)}"
            if rng.random() < 0.6:
                seq.append({"ts": float(t), "type": "click", "item_id": item, "item": item,
                            "category": f"c{rng.integers(30)}", "amount": 0.0, "quantity": 0})
            else:
                for _ in range(1 + (rng.random() < 0.2) * int(rng.integers(1, 4))):
                    seq.append({"ts": float(t), "type": "purchase", "item_id": item, "item": item,
                                "category": f"c{rng.integers(30)}", "amount": float(rng.gamma(2, 20)),
                                "quantity": int(rng.integers(1, 4))})
        if len(seq) > 2 and rng.random() < 0.2:  # a late event, appended out of order
            seq.append(dict(seq[int(rng.integers(len(seq)))], ts=float(ts[0]) - 3600.0))
        seqs.append(seq)
        as_of.append(float(ts[-1]) + 60.0 if k and rng.random() < 0.3 else 1.7e9 + 3600.0)
    return seqs, as_of


@pytest.mark.parametrize("max_events", [64, 16])
def test_prepare_on_stream_rings_equals_the_reference(max_events):
    seqs, as_of = stream_rings(400, seed=max_events)
    kw = {"max_events": max_events, "item_buckets": 4096, "category_buckets": 64}
    assert_same_prepared(R.prepare(seqs, as_of, **kw), F.prepare(seqs, as_of, **kw))


# ------------------------------------------------------------------------------------------------
# real data: the CDNOW sample (purchase lines with many same-day baskets), several as_of
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cdnow_sequences():
    from models.churn.data import frame_to_sequences

    seqs = frame_to_sequences(cdnow_sample())
    return [seqs[u] for u in sorted(seqs)]


@pytest.mark.parametrize("as_of, max_events", [(CUTOFF, 64), (CUTOFF, 16), (CUTOFF - 120 * DAY, 8),
                                               (CUTOFF + 400 * DAY, 64)])
def test_prepare_on_cdnow_equals_the_reference(as_of, max_events):
    seqs = cdnow_sequences()
    kw = {"max_events": max_events, "item_buckets": 4096, "category_buckets": 64}
    assert_same_prepared(R.prepare(seqs, [as_of] * len(seqs), **kw), F.prepare(seqs, [as_of] * len(seqs), **kw))


def test_scorer_outputs_are_unchanged():
    """ChurnScorer.predict_many with the batched featurisation equals the same model fed the reference."""
    import torch

    from models.churn.scorer import ChurnScorer
    from models.churn.train import new_model

    from .helpers import random_events, tiny_config

    model = new_model(tiny_config(max_events=32), 0)
    with torch.no_grad():  # a non-trivial calibration, so that every output path is exercised
        model.temperature.fill_(1.3)
        model.bias.fill_(-0.2)
        model.forecast_shift.fill_(0.4)
    rng = np.random.default_rng(5)
    seqs = [random_events(rng, int(rng.integers(0, 60)), t0=8.2e8) for _ in range(90)] + cdnow_sequences()[:200]
    as_of = [8.2e8 + 150 * DAY] * 90 + [CUTOFF] * 200
    scorer = ChurnScorer(model, device="cpu", micro_batch=32)
    prob, rate = scorer.predict_many(seqs, as_of)
    patched = pytest.MonkeyPatch()
    with patched.context() as mp:
        mp.setattr(F, "prepare", R.prepare)
        mp.setattr(F, "collate", R.collate)
        want_prob, want_rate = scorer.predict_many(seqs, as_of)
    np.testing.assert_array_equal(prob, want_prob)
    np.testing.assert_array_equal(rate, want_rate)
