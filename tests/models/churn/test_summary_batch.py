"""The compiled summary of event records (models/churn/summary_batch.py) is bit for bit the per-sequence
reference's (tests/models/churn/features_reference.py), on messy input and on the stream's rings."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.churn import summary_batch as SB

from . import features_reference as R
from .test_features_fast import DAY, TIMES, _bits, cdnow_sequences, outcome, stream_rings


@dataclass
class Rec:
    """An event record as the stream's ring holds one (``RecentEvent``'s summary fields)."""

    ts: Any
    type: Any
    amount: Any = 0.0
    quantity: Any = 0


def as_dicts(seqs):
    return [[{"ts": e.ts, "type": e.type, "amount": e.amount, "quantity": e.quantity} for e in s] for s in seqs]


def reference_summary(seqs, as_of):
    return R.prepare(as_dicts(seqs), as_of, max_events=8, item_buckets=16, category_buckets=4)[1]


def assert_same(seqs, as_of, want_fn=reference_summary, got_fn=SB.summary_of_records):
    """``got_fn(seqs, as_of)`` equals ``want_fn(seqs, as_of)`` bit for bit, or both raise alike."""
    want, want_err = outcome(want_fn, seqs, as_of)
    got, got_err = outcome(got_fn, seqs, as_of)
    assert got_err == want_err
    if want is not None:
        assert got.dtype == want.dtype and got.shape == want.shape
        assert _bits(got) == _bits(want), np.argwhere(got != want)[:5]


def covered(seqs, as_of) -> int:
    """How many sequences the fast path computes itself (the rest go through prepare)."""
    return int((~SB.general_rows(seqs, as_of)).sum())


# messy records: repeated times (baskets), odd amounts and quantities, unknown types, unsorted input
ts_st = st.one_of(st.sampled_from(TIMES), st.floats(-1e7, 4e7, allow_nan=False, allow_infinity=False),
                  st.integers(0, 4 * 10**7), st.just(float("-inf")), st.just(float("nan")))
amount_st = st.one_of(st.floats(-50, 5000), st.just(0.0), st.just(-0.0), st.just(float("nan")),
                      st.just(float("inf")), st.integers(-3, 100), st.floats(1e300, 1e308), st.none())
qty_st = st.one_of(st.integers(-2, 12), st.sampled_from([0.0, 2.0, 2.7, -1.5, float("nan")]), st.none(),
                   st.just(2**40))
# no unknown types here: one in a batch made both paths raise, so most examples compared errors, not values
# (an unknown type has its own test below)
type_st = st.sampled_from(["click", "purchase", "purchase", "purchase"])
record_st = st.builds(Rec, ts=ts_st, type=type_st, amount=amount_st, quantity=qty_st)
clean_st = st.builds(Rec, ts=st.sampled_from(TIMES), type=st.sampled_from(["click", "purchase", "purchase"]),
                     amount=st.one_of(st.floats(-20, 500), st.just(0.0), st.just(-0.0)), quantity=st.integers(-1, 4))


@st.composite
def batch_st(draw):
    seqs, as_of = [], []
    for _ in range(draw(st.integers(0, 24))):
        events = draw(st.lists(st.one_of(record_st, clean_st, clean_st), max_size=40))
        if draw(st.booleans()):
            events.sort(key=lambda e: float(e.ts) if isinstance(e.ts, (int, float)) else 0.0)
        seqs.append(events)
        finite = [float(e.ts) for e in events if np.isfinite(float(e.ts))]
        as_of.append(draw(st.one_of(st.just(max(finite, default=0.0) + DAY), st.sampled_from(TIMES),
                                    st.just(float("inf")))))
    return seqs, as_of


@settings(max_examples=300, deadline=None)
@given(batch=batch_st())
def test_summary_of_records_equals_the_reference(batch):
    assert_same(*batch)


@settings(max_examples=30, deadline=None)
@given(batch=batch_st(), where=st.integers(0, 10**6))
def test_an_unknown_event_type_fails_both_paths_alike(batch, where):
    seqs, as_of = batch
    if not seqs:
        seqs, as_of = [[]], [TIMES[0]]
    i = where % len(seqs)
    seqs[i] = seqs[i] + [Rec(ts=TIMES[0], type="view", amount=1.0, quantity=1)]
    as_of = list(as_of)
    as_of[i] = max(TIMES) + DAY  # the unknown event is before the scoring time (later ones are not read)
    want, want_err = outcome(reference_summary, seqs, as_of)
    got, got_err = outcome(SB.summary_of_records, seqs, as_of)
    assert want_err is not None and got_err == want_err


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 140), min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_long_sums_follow_numpys_pairwise_order(lengths, seed):
    """Sorted purchase histories of every length around numpy's 8-term blocks and its 128-term limit."""
    rng = np.random.default_rng(seed)
    seqs = []
    for n in lengths:
        ts = np.sort(rng.uniform(0, 300 * DAY, n))
        seqs.append([Rec(float(t), "purchase" if rng.random() < 0.8 else "click",
                         float(rng.lognormal(3, 2)) * (rng.random() < 0.9), int(rng.integers(0, 4))) for t in ts])
    as_of = [400 * DAY] * len(seqs)
    assert_same(seqs, as_of)
    assert covered(seqs, as_of) == sum(1 for n in lengths if n <= SB.MAX_EVENTS)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 128), min_size=1, max_size=8), seed=st.integers(0, 2**32 - 1))
def test_compiled_rows_equal_summary_row_in_float64(lengths, seed):
    """Before the float32 rounding, which hides most last-bit differences (a sum in another order passed the
    float32 comparisons above): the loop's float64 rows are ``features._summary_row``'s, bit for bit."""
    from models.churn import features as F

    rng = np.random.default_rng(seed)
    seqs, want = [], []
    as_of = 400 * DAY
    for n in lengths:
        ts = np.unique(rng.uniform(0, 300 * DAY, n)).tolist()  # distinct times: no baskets to merge
        amounts = rng.lognormal(3, 2, len(ts)).tolist()
        qty = rng.integers(0, 4, len(ts)).tolist()
        seqs.append([Rec(t, "purchase", a, q) for t, a, q in zip(ts, amounts, qty)])
        counted = [q for q in qty if q > 0]
        want.append(F._summary_row(len(ts), ts[0] if ts else 0.0, ts[-1] if ts else 0.0, ts, amounts,
                                   sum(counted) if counted else None, as_of))
    got, general = SB._summarise(*SB._columns(seqs, [as_of] * len(seqs)), True, True)
    assert not general.any()
    assert _bits(got) == _bits(np.array(want, dtype=np.float64).reshape(len(seqs), F.N_SUMMARY))


def _records(dict_seqs):
    return [[Rec(e["ts"], e["type"], e.get("amount", 0.0), e.get("quantity", 0)) for e in s] for s in dict_seqs]


def test_stream_rings_mostly_take_the_fast_path_with_the_same_result():
    seqs, as_of = stream_rings(400, seed=3)
    records = _records(seqs)
    assert_same(records, as_of)
    # future events are dropped, late ones sorted into place, baskets and everything else vectorised
    assert covered(records, as_of) == len(records)


def test_regression_rings_holding_a_late_event_take_the_fast_path():
    """A stream ring holds events in arrival order, so a late event leaves it out of time order; such rings all
    went through prepare one by one (~40 µs a user): with 2 % late events, three rings of 64 events in four, and
    a soak's churn scoring cost 44 µs per user scored (found by the soak). They are sorted in place now, stably,
    as prepare sorts them: events at one time keep their order (a basket's lines)."""
    rings = [[Rec(5 * DAY, "purchase", 10.0, 1), Rec(2 * DAY, "purchase", 5.0, 2), Rec(7 * DAY, "click")],
             [Rec(4 * DAY, "purchase", 7.0, 1), Rec(4 * DAY, "purchase", 2.0, 3), Rec(1 * DAY, "purchase", 1.0, 1),
              Rec(4 * DAY, "purchase", -0.0, 1)],  # a basket split around a late line, -0.0 on a basket line
             [Rec(6 * DAY, "purchase", 3.0, 1), Rec(6 * DAY, "click"), Rec(3 * DAY, "purchase", 8.0, 1)]]
    as_of = [8 * DAY] * len(rings)
    assert_same(rings, as_of)
    assert covered(rings, as_of) == 2  # the -0.0 on a basket line is prepare's own case (general path)
    assert covered(rings[::2], as_of[::2]) == 2


def test_regression_events_at_the_scoring_time_kept_a_sixth_of_the_stream_rings_off_the_fast_path():
    """A tick falls on the time of the event that crosses it (CDNOW's purchases are at midnights, as are the
    daily ticks), so that event is in the ring when the tick scores it; prepare leaves it out. Such rings went
    through prepare one by one: half the served model's scoring time in bench/live.py."""
    rings = [[Rec(1 * DAY, "purchase", 10.0, 1), Rec(3 * DAY, "purchase", 5.0, 2)],
             [Rec(2 * DAY, "purchase", 7.0, 1), Rec(3 * DAY, "purchase", 1.0, 1), Rec(3 * DAY, "purchase", 2.0, 1)],
             [Rec(3 * DAY, "purchase", 4.0, 1)],  # nothing before the scoring time: an empty history
             [Rec(2 * DAY, "purchase", 3.0, 1), Rec(5 * DAY, "purchase", 1.0, 1), Rec(4 * DAY, "purchase", 1.0, 1)]]
    as_of = [3 * DAY] * len(rings)
    assert_same(rings, as_of)
    assert covered(rings, as_of) == len(rings)  # the later ones, out of order, are not read either


def test_cdnow_baskets_take_the_fast_path_with_the_same_result():
    seqs = _records(cdnow_sequences())
    as_of = [8.75e8] * len(seqs)  # 1997-09-23, inside the calibration period: some purchases are in the future
    assert_same(seqs, as_of)
    assert covered(seqs, as_of) == len(seqs)  # the future purchases are dropped, as prepare drops them
    later = [1e9] * len(seqs)
    assert_same(seqs, later)
    assert covered(seqs, later) == len(seqs)  # same-day lines merged in the fast path too


def glm_only_model():
    """A tiny model that kept its GLM start (zero deep head, random linear path): it scores from the summary."""
    import torch

    from models.churn.train import new_model

    from .helpers import tiny_config

    model = new_model(tiny_config(), 0)
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
        torch.manual_seed(0)
        model.wide.weight.normal_(0, 0.5)
    return model


def test_ring_scorer_uses_the_summary_path_with_the_same_scores():
    """A model that scores without its encoder: RingScorer's vectorised path gives ChurnScorer.predict_many's
    probabilities and forecasts exactly; one by one (the dict path, below ``MIN_BATCH``) they agree too."""
    import torch

    from models.churn.scorer import ChurnScorer
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    model = glm_only_model()
    with torch.no_grad():
        model.temperature.fill_(1.3)
    scorer = ChurnScorer(model, device="cpu")
    assert not scorer.uses_encoder
    dict_seqs, as_of = stream_rings(120, seed=9)
    rings = [[RecentEvent(ts=e["ts"], type=e["type"], item_id=e["item"], category=e["category"],
                          amount=e["amount"], quantity=e["quantity"]) for e in s] for s in dict_seqs]
    ring_scorer = RingScorer(scorer)
    assert ring_scorer._from_summary(rings)
    prob, rate = ring_scorer.predict_many(rings, as_of)
    want_prob, want_rate = scorer.predict_many(dict_seqs, as_of)
    np.testing.assert_array_equal(prob, want_prob)
    np.testing.assert_array_equal(rate, want_rate)
    np.testing.assert_array_equal(ring_scorer.score_many(rings, as_of), want_prob)
    assert np.ptp(prob) > 0.01
    one_by_one = [ring_scorer.predict_many([r], [t])[0][0] for r, t in zip(rings[:20], as_of[:20])]
    np.testing.assert_allclose(one_by_one, prob[:20], rtol=1e-5, atol=0)  # float32 GEMMs of other shapes


@settings(max_examples=150, deadline=None)
@given(batch=batch_st())
def test_without_clicks_equals_the_reference_on_the_sequences_without_their_clicks(batch):
    assert_same(*batch, want_fn=lambda q, t: reference_summary([[e for e in s if e.type != "click"] for s in q], t),
                got_fn=lambda q, t: SB.summary_of_records(q, t, clicks=False))


def assert_scored_alike(scorer, rings, other_rings, as_of) -> None:
    """``scorer`` gives ``rings`` and ``other_rings`` the same predictions on both of RingScorer's paths: the
    vectorised summary for the whole batch (``rings`` must hold at least MIN_BATCH users), the dict path for five."""
    assert len(rings) >= SB.MIN_BATCH
    for part in (slice(None), slice(0, 5)):
        got, want = scorer.predict_many(rings[part], as_of[part]), scorer.predict_many(other_rings[part], as_of[part])
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_regression_a_model_trained_without_clicks_does_not_read_clicks():
    """The CDNOW model (purchases only) read a browsing user's clicks as the activity it had only seen from buyers:
    60 clicks yesterday gave 166 expected purchases (found by review). A model whose metadata lists the event
    types it was trained on scores the others' absence, on both of RingScorer's paths."""
    from models.churn.scorer import ChurnScorer
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    model = glm_only_model()
    purchases_only = RingScorer(ChurnScorer(model, device="cpu", meta={"event_types": ["purchase"]}))
    reads_all = RingScorer(ChurnScorer(model, device="cpu", meta={"event_types": ["click", "purchase"]}))
    buys = [RecentEvent(ts=d * DAY, type="purchase", amount=20.0, quantity=1) for d in range(0, 60, 7)]
    clicks = [RecentEvent(ts=d * DAY + 3600, type="click") for d in range(0, 60)]
    rings = [sorted(buys + clicks[: 2 * n], key=lambda e: e.ts) for n in range(40)]  # 40 users: summary path
    bare = [buys for _ in rings]
    as_of = [61 * DAY] * len(rings)
    assert_scored_alike(purchases_only, rings, bare, as_of)
    assert np.ptp(reads_all.predict_many(rings, as_of)[1]) > 0  # a model trained with clicks reads them


def test_corner_cases_equal_the_reference():
    """Signed zeros (Python's max keeps -0.0, numpy's maximum does not; prepare reads a -0.0 basket line as 0.0),
    baskets of several lines with zero or negative quantities, refunds: each alone and in one batch."""
    p, c = "purchase", "click"
    cases = [
        [Rec(DAY, p, -0.0, 1)],
        [Rec(DAY, p, 5.0, 1), Rec(2 * DAY, p, -0.0, 0)],
        [Rec(DAY, p, -0.0, 1), Rec(DAY, p, -0.0, 1)],
        [Rec(DAY, p, 0.0, 1), Rec(DAY, p, -0.0, 2)],
        [Rec(DAY, p, 3.0, 0), Rec(DAY, p, 4.0, -2), Rec(DAY, p, 5.0, 3), Rec(3 * DAY, c, 0.0, 7)],
        [Rec(DAY, p, -10.0, 1), Rec(DAY, c, 0.0, 0), Rec(DAY, p, 2.0, 1), Rec(5 * DAY, p, 1.5, 2)],
        [Rec(DAY, c, 0.0, 0)] * 3,
        [],
    ]
    as_of = [10 * DAY] * len(cases)
    for case in cases:
        assert_same([case], [10 * DAY])
    assert_same(cases * 3, as_of * 3)  # one batch of them all
    assert covered(cases, as_of) == len(cases) - 2  # the -0.0 basket lines go through prepare


def _log1p_column(amounts: np.ndarray) -> np.ndarray:
    """The compiled loop's float64 column 18 (log1p of the last amount) for one purchase of each amount."""
    seqs = [[Rec(0.0 + DAY, "purchase", float(a), 1)] for a in amounts.tolist()]
    out, general = SB._summarise(*SB._columns(seqs, [2 * DAY] * len(seqs)), True, True)
    assert not general.any()
    return out[:, 18]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.floats(0, 1e308), st.floats(0, 1e-3), st.floats(0, 1e4), st.integers(0, 10**6),
                                 st.sampled_from([0.0, -0.0])), max_size=64))
def test_compiled_log1p_is_libms_bit_for_bit(values):
    """``features._summary_row`` calls libm's log1p (``math.log1p``); the compiled loop must call the same one,
    in float64 before the float32 rounding (signed zeros included; a NaN amount is absent)."""
    x = np.array(values, dtype=np.float64)
    libm = np.array([math.log1p(max(v, 0.0)) for v in x.tolist()])
    assert _bits(_log1p_column(x)) == _bits(libm)


def test_log1p_inputs_where_numpy_and_libm_differ_take_libms_value():
    """numpy's log1p (SIMD) differs from libm's in the last float64 bit on ~3 % of inputs: the vectorised summary
    before the compiled loop had to detect where that changed the float32 (a guard of its own, with tests)."""
    x = np.random.default_rng(7).exponential(50.0, 200_000)
    libm = np.array([math.log1p(v) for v in x.tolist()])
    differ = np.log1p(x) != libm
    assert differ.any()  # the case that needs libm's own log1p
    assert _bits(_log1p_column(x[differ])) == _bits(libm[differ])


@settings(max_examples=150, deadline=None)
@given(batch=batch_st(), amounts=st.booleans(), quantities=st.booleans())
def test_without_amounts_or_quantities_equals_the_reference_on_records_without_them(batch, amounts, quantities):
    fields = {"amount"} if not amounts else set()
    fields |= {"quantity"} if not quantities else set()

    def reference_without_fields(q, t):
        dicts = [[{k: v for k, v in e.items() if k not in fields} for e in s] for s in as_dicts(q)]
        return R.prepare(dicts, t, max_events=8, item_buckets=16, category_buckets=4)[1]

    assert_same(*batch, want_fn=reference_without_fields,
                got_fn=lambda q, t: SB.summary_of_records(q, t, amounts=amounts, quantities=quantities))


def test_regression_a_model_trained_without_amounts_does_not_read_them():
    """A model trained on a log without amounts or quantities (a CSV of user_id,ts) saw them absent on every event;
    served the stream's amounts, its summary columns and amount buckets met values its weights never learnt from.
    Its metadata lists the fields it read, and it scores as if the others were absent, on both of RingScorer's
    paths (noticed in the thirteenth session, fixed in the eighteenth)."""
    from models.churn.scorer import ChurnScorer
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    model = glm_only_model()
    bare = RingScorer(ChurnScorer(model, device="cpu", meta={"event_types": ["purchase"], "event_fields": []}))
    reads_all = RingScorer(ChurnScorer(model, device="cpu", meta={"event_types": ["purchase"]}))
    assert not bare.scorer.reads_amounts and not bare.scorer.reads_quantities and reads_all.scorer.reads_amounts
    rings = [[RecentEvent(ts=d * DAY, type="purchase", amount=float(10 * n + d), quantity=1 + n % 3)
              for d in range(0, 60, 7)] for n in range(40)]  # 40 users: the summary path
    plain = [[RecentEvent(ts=e.ts, type="purchase", amount=0.0, quantity=0) for e in ring] for ring in rings]
    as_of = [61 * DAY] * len(rings)
    assert_scored_alike(bare, rings, plain, as_of)
    assert np.ptp(reads_all.predict_many(rings, as_of)[1]) > 0  # a model trained with amounts reads them


def test_regression_a_purchase_at_time_minus_zero_takes_the_per_sequence_path():
    """Gaps of -0.0 and 0.0 (purchases at times 0.0 and -0.0 apart from a click): numpy's maximum/minimum reduce
    does not keep Python's choice between them, so the gap columns differed from prepare's in the sign bit (found
    by review; only a log with times at exactly zero has one)."""
    from models.churn import features as F

    ring = [Rec(0.0, "purchase", 1.0, 1), Rec(0.0, "click"), Rec(-0.0, "purchase", 2.0, 1), Rec(0.0, "click"),
            Rec(0.0, "purchase", 3.0, 1)]

    def served(seqs, as_of):  # the package's own per-sequence path (the test reference differs in this sign bit)
        return F.prepare(as_dicts(seqs), as_of, max_events=0, item_buckets=2, category_buckets=2,
                         with_tokens=False)[1]

    assert_same([ring, ring[:1]], [DAY, DAY], want_fn=served)
    assert covered([ring, ring[:1]], [DAY, DAY]) == 1


def test_regression_a_model_trained_without_item_or_category_ids_does_not_read_them():
    """A version that runs its encoder hashes each event's item and category into embedding buckets; a training
    log without them (every CDNOW log) left those embeddings at their random start, and the stream's ids (CDNOW's
    replay sends category "music", ml-100k's clicks carry items) were read through them: noise in the scores
    (found by a train/serve skew review). A version records the ids it saw (``id_fields``) and ignores the others;
    one published before reads them, as it did."""
    from models.churn.scorer import ChurnScorer
    from models.churn.train import new_model
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    from .helpers import tiny_config

    model = new_model(tiny_config(), 0)
    meta = {"event_types": ["click", "purchase"]}
    without_ids = RingScorer(ChurnScorer(model, device="cpu", meta=meta | {"id_fields": []}))
    older = RingScorer(ChurnScorer(model, device="cpu", meta=meta))
    assert without_ids.scorer.uses_encoder
    rings = [[RecentEvent(ts=d * DAY, type="click" if d % 2 else "purchase", item_id=f"i{n + d}",
                          category=f"c{d % 5}", amount=10.0, quantity=1) for d in range(0, 30, 3)] for n in range(40)]
    bare = [[RecentEvent(ts=e.ts, type=e.type, amount=e.amount, quantity=e.quantity) for e in ring] for ring in rings]
    as_of = [31 * DAY] * len(rings)
    assert_scored_alike(without_ids, rings, bare, as_of)
    with_ids, no_ids = older.predict_many(rings, as_of)[0], older.predict_many(bare, as_of)[0]
    assert not np.array_equal(with_ids, no_ids)  # the ids move an encoder's scores: the test can tell


def test_regression_a_model_trained_on_whole_days_is_served_event_times_in_whole_days():
    """CDNOW records dates: two orders of one day are one line-date in training, but a stream of seconds made them
    two orders, a gap of a fifth of a day and a repeat buyer (0.881 against 0.847; found by a train/serve skew
    review). A version records its log's resolution (``ts_resolution_s``) and is served times floored to it, on
    both of RingScorer's paths; one without the entry reads them as they are."""
    from models.churn.scorer import ChurnScorer
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    model = glm_only_model()
    meta = {"event_types": ["purchase"]}
    by_day = RingScorer(ChurnScorer(model, device="cpu", meta=meta | {"ts_resolution_s": 86400.0}))
    as_is = RingScorer(ChurnScorer(model, device="cpu", meta=meta))
    assert by_day.scorer.ts_resolution_s == 86400.0 and as_is.scorer.ts_resolution_s == 0.0
    day = lambda n: (5 + n % 20) * DAY  # noqa: E731
    in_seconds = [[RecentEvent(ts=day(n) + 10 * 3600.0, type="purchase", amount=20.0, quantity=1),
                   RecentEvent(ts=day(n) + 15 * 3600.0 + n, type="purchase", amount=5.0, quantity=1)]
                  for n in range(40)]
    at_midnight = [[RecentEvent(ts=day(n), type="purchase", amount=20.0, quantity=1),
                    RecentEvent(ts=day(n), type="purchase", amount=5.0, quantity=1)] for n in range(40)]
    as_of = [40 * DAY] * len(in_seconds)
    assert_scored_alike(by_day, in_seconds, at_midnight, as_of)
    assert not np.array_equal(as_is.predict_many(in_seconds, as_of)[0], as_is.predict_many(at_midnight, as_of)[0])


@settings(max_examples=150, deadline=None)
@given(batch=batch_st(), resolution=st.sampled_from([60.0, 3600.0, 86400.0]))
def test_with_a_time_resolution_equals_the_reference_on_floored_times(batch, resolution):
    def reference_floored(q, t):
        dicts = [[{**e, "ts": e["ts"] // resolution * resolution} for e in s] for s in as_dicts(q)]
        return R.prepare(dicts, t, max_events=8, item_buckets=16, category_buckets=4)[1]

    with np.errstate(invalid="ignore"):
        assert_same(*batch, want_fn=reference_floored,
                    got_fn=lambda q, t: SB.summary_of_records(q, t, resolution=resolution))


def _numpy_glm(summary, low, high, mean, std, weight, bias, temperature, cal_bias, shift, most):
    """The numpy linear path the compiled one replaced, with libm's exp (numpy's SIMD exp differs in the last bit)."""
    with np.errstate(all="ignore"):
        x = (np.clip(np.asarray(summary, np.float64), low, high) - mean) / std
        out = (x[:, None, :] * weight[None, :, :]).sum(-1) + bias
        z = out[:, 0] / temperature + cal_bias
        p = np.array([1.0 / (1.0 + math.exp(-v)) if not math.isnan(v) else math.nan for v in z.tolist()])
        r = np.minimum(np.array([math.exp(min(v, 700.0)) if not math.isnan(v) else math.nan
                                 for v in (out[:, 1] + shift).tolist()]), most)
    return p, r


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nan_bound=st.sampled_from([None, "low", "high"]),
       zero_std=st.booleans(), rows=st.integers(0, 40))
def test_compiled_linear_path_equals_numpy_with_its_nan_and_zero_rules(seed, nan_bound, zero_std, rows):
    """The compiled linear path is the numpy one, row by row: a NaN bound gives NaN as ``np.clip`` does (the first
    version took the other bound: p = 1.0 for a model with a NaN minimum; found by review), a zero std divides to
    inf or NaN as numpy does (it raised ZeroDivisionError), a NaN feature stays NaN, and a row's outputs do not
    depend on the other rows."""
    rng = np.random.default_rng(seed)
    k = 22
    summary = rng.normal(0, 3, (rows, k)).astype(np.float32)
    summary[rng.random((rows, k)) < 0.05] = np.nan
    low, high = np.full(k, -4.0), np.full(k, 4.0)
    if nan_bound:
        (low if nan_bound == "low" else high)[rng.integers(k)] = np.nan
    std = rng.uniform(0.5, 2, k)
    if zero_std:
        std[rng.integers(k)] = 0.0
    params = (low, high, rng.normal(0, 1, k), std, rng.normal(0, 0.5, (2, k)), rng.normal(0, 1, 2), 1.3, 0.1,
              0.2, 50.0)
    got = SB.glm_outputs(summary, *params)
    want = _numpy_glm(summary, *params)
    assert _bits(got[0]) == _bits(want[0]) and _bits(got[1]) == _bits(want[1])
    if rows:
        alone = [SB.glm_outputs(summary[i:i + 1], *params) for i in range(rows)]
        assert _bits(np.concatenate([a[0] for a in alone])) == _bits(got[0])


def test_regression_a_summary_of_another_width_is_refused():
    """The compiled loop reads as many columns as it is given: 21 used 21 of the model's 22 weights silently, 23
    read past them (the numpy version raised on the broadcast; found by review)."""
    import pytest

    from models.churn.scorer import ChurnScorer

    scorer = ChurnScorer(glm_only_model(), device="cpu")
    assert scorer.predict_from_summary(np.zeros((3, 22), np.float32))[0].shape == (3,)
    for width in (21, 23):
        with pytest.raises(ValueError, match="expected"):
            scorer.predict_from_summary(np.zeros((3, width), np.float32))


def test_regression_without_a_writable_cache_the_loop_compiles_uncached(caplog):
    """numba raised at import where it had nowhere to cache the compiled loop (a read-only filesystem, another user
    id than the image's), so the worker could not start (found by review). A function numba cannot cache (no
    source file) stands in for that case."""
    namespace: dict = {}
    exec(compile("def plus_one(x):\n    return x + 1\n", "<no file>", "exec"), namespace)
    with caplog.at_level("WARNING"):
        compiled = SB._compiled(namespace["plus_one"])
    assert compiled(41) == 42
    assert "compiled at each start" in caplog.text
