"""Data loading, the task split and the no-leakage guarantees."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.churn import features as F
from models.churn.data import build_task, load_purchases_csv, parse_time, sample_users, split_users
from models.churn.model import ChurnConfig
from models.churn.train import tokenize_task
from tidewater.errors import UserError

from .helpers import CUTOFF, cdnow_sample


def test_cdnow_sample_task_matches_the_standard_setup():
    task = build_task(cdnow_sample(), parse_time("1997-10-01"), 273, seed=0)
    assert len(task.users) == 2357
    assert task.cutoff == CUTOFF
    assert abs(task.churn.mean() - 0.7098) < 0.001  # 71 % churn in weeks 40-78
    parts = {p: len(task.idx(p)) for p in ("train", "val", "test")}
    assert sum(parts.values()) == 2357 and abs(parts["test"] - 0.3 * 2357) <= 1
    assert all(e["ts"] < task.cutoff for seq in task.sequences for e in seq)
    assert ((task.count == 0) == (task.churn == 1)).all()


def test_split_is_seeded_and_order_independent():
    users = np.array([f"u{i}" for i in range(500)])
    a = split_users(users, 0)
    assert (a == split_users(users, 0)).all()
    assert (a != split_users(users, 1)).any()
    perm = np.random.default_rng(3).permutation(500)
    b = split_users(users[perm], 0)
    assert (b == a[perm]).all()


events_strategy = st.lists(  # times in per cent of the cut-off: calibration rows, strictly before it
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 99), st.floats(0, 50), st.integers(1, 5)),
    min_size=1, max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, cut_day=st.floats(1, 99), horizon=st.floats(1, 60),
       extra=st.lists(st.tuples(st.sampled_from(["a", "c", "d", "e"]), st.floats(0, 100)), max_size=10),
       new_amount=st.floats(0, 1e6))
def test_no_holdout_event_reaches_the_features(events, cut_day, horizon, extra, new_amount):
    """Adding or changing events at/after the cut-off must not change any feature (tokens or summaries).

    Every example reaches the comparison: the calibration rows are all before the cut-off, user "a" buys in the
    holdout and "b" never comes back (two labels, so the task builds), and the future rows both add events and
    rewrite a's holdout purchase."""
    day = 86400.0
    cutoff = cut_day * day
    rows = [{"user_id": u, "ts": d / 100 * cutoff, "amount": a, "quantity": q} for u, d, a, q in events]
    rows += [{"user_id": "a", "ts": 0.0, "amount": 1.0, "quantity": 1},
             {"user_id": "b", "ts": 0.5 * cutoff, "amount": 2.0, "quantity": 1},
             {"user_id": "a", "ts": cutoff + 0.5 * horizon * day, "amount": 3.0, "quantity": 1}]
    frame = pd.DataFrame(rows)
    future = pd.DataFrame([{"user_id": u, "ts": cutoff + d * day, "amount": 1e6, "quantity": 99} for u, d in extra])
    rewritten = frame.copy()
    rewritten.loc[rewritten["ts"] >= cutoff, "amount"] = new_amount
    base = build_task(frame, cutoff, horizon)
    more = build_task(pd.concat([rewritten, future], ignore_index=True), cutoff, horizon)
    assert set(base.churn) == {0, 1}
    assert list(base.users) == list(more.users)  # a user with only future events never enters the task
    cfg = ChurnConfig(max_events=8)
    for view in ("sequences", "ring_sequences"):  # the baselines' whole history and the model's ring view
        t1, s1 = tokenize_task(getattr(base, view), base.as_of, cfg)
        t2, s2 = tokenize_task(getattr(more, view), more.as_of, cfg)
        np.testing.assert_array_equal(s1, s2)
        for a, b in zip(t1, t2):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_leakage_detector_would_fail_if_the_cutoff_were_ignored():
    """Sanity check of the test above: with the cut-off moved past a future event the features do change."""
    day = 86400.0
    seq = [{"ts": 1 * day, "type": "purchase", "amount": 10.0, "quantity": 1},
           {"ts": 5 * day, "type": "purchase", "amount": 1e6, "quantity": 99}]
    before = F.summary_features(F.normalize_events(seq, 3 * day), 3 * day)
    leaked = F.summary_features(F.normalize_events(seq, 6 * day), 3 * day)
    assert not np.array_equal(before, leaked)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 10_000), as_of_day=st.floats(0, 300))
def test_featurizer_ignores_events_at_or_after_as_of(n, seed, as_of_day):
    from .helpers import random_events

    rng = np.random.default_rng(seed)
    events = random_events(rng, n, t0=0.0, span_days=300)
    as_of = as_of_day * 86400.0
    past = [e for e in events if e["ts"] < as_of]
    kw = dict(max_events=8, item_buckets=64, category_buckets=16)
    toks_all, s_all = F.prepare([events], [as_of], **kw)
    toks_past, s_past = F.prepare([past], [as_of], **kw)
    np.testing.assert_array_equal(s_all, s_past)
    for k in toks_all[0]:
        np.testing.assert_array_equal(toks_all[0][k], toks_past[0][k])
    assert np.isfinite(s_all).all()
    assert len(toks_all[0]["type"]) == 1 + min(len(past), 8)


def test_same_timestamp_purchase_lines_are_one_basket():
    seq = [{"ts": 10.0, "type": "purchase", "amount": 5.0, "quantity": 1},
           {"ts": 10.0, "type": "purchase", "amount": 7.0, "quantity": 2}]
    norm = F.normalize_events(seq, 100.0)
    assert len(norm) == 1 and norm[0]["amount"] == 12.0 and norm[0]["quantity"] == 3


def test_csv_loader_accepts_iso_and_epoch_and_rejects_bad_input(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("user_id,ts,amount\nu1,2020-01-02,3.5\nu2,2020-01-03T10:00:00Z,1\n")
    frame = load_purchases_csv(good)
    assert list(frame.columns[:3]) == ["user_id", "ts", "amount"]
    assert frame["ts"].iloc[0] == parse_time("2020-01-02")
    epoch = tmp_path / "e.csv"
    epoch.write_text("user_id,ts\nu1,1577923200\n")
    assert load_purchases_csv(epoch)["ts"].iloc[0] == 1577923200.0
    missing = tmp_path / "m.csv"
    missing.write_text("user,ts\nu1,2020-01-01\n")
    with pytest.raises(UserError, match="missing column"):
        load_purchases_csv(missing)
    bad = tmp_path / "b.csv"
    bad.write_text("user_id,ts\nu1,not-a-date\n")
    with pytest.raises(UserError, match="cannot parse ts"):
        load_purchases_csv(bad)
    with pytest.raises(UserError, match="calibration set is empty"):
        build_task(frame, parse_time("2019-01-01"), 30)
    with pytest.raises(UserError):
        parse_time("31/31/2020")


def test_csv_loader_reads_yyyymmdd_and_epoch_milliseconds(tmp_path):
    """CDNOW's own file writes dates as YYYYMMDD; Kafka and JavaScript write milliseconds. Read as seconds, both
    would put every purchase in 1970 and the churn task would measure gaps in the wrong unit."""
    dates = tmp_path / "d.csv"
    dates.write_text("user_id,ts\nu1,19970101\nu2,19970312\n")
    frame = load_purchases_csv(dates)
    assert frame["ts"].tolist() == [parse_time("1997-01-01"), parse_time("1997-03-12")]
    assert frame.attrs["ts_unit"] == "yyyymmdd"
    millis = tmp_path / "ms.csv"
    millis.write_text(f"user_id,ts\nu1,{int(parse_time('2020-01-02')) * 1000}\n")
    assert load_purchases_csv(millis)["ts"].tolist() == [parse_time("2020-01-02")]


def test_cdnow_sample_as_a_csv_with_its_own_yyyymmdd_dates_gives_the_standard_task(tmp_path):
    """Real data through the CSV path: the CDNOW sample exported with the file's own YYYYMMDD dates (as a user
    would export it) gives the same task as the package loader: same users, labels, counts and features."""
    sample = cdnow_sample()
    path = tmp_path / "cdnow_sample.csv"
    sample.assign(ts=pd.to_datetime(sample["ts"], unit="s").dt.strftime("%Y%m%d").astype(int)).to_csv(path, index=False)
    frame = load_purchases_csv(path)
    assert frame.attrs["ts_unit"] == "yyyymmdd"
    want = build_task(sample, CUTOFF, 273, seed=0)
    got = build_task(frame, CUTOFF, 273, seed=0)
    assert list(got.users) == list(want.users) and (got.churn == want.churn).all() and (got.count == want.count).all()
    assert got.sequences == want.sequences


def test_a_log_too_small_for_the_split_is_a_user_error_not_a_traceback():
    """Regression: a 10-user log (7 churn) left a validation split with only churners, and the recency
    baseline's logistic calibration raised a scikit-learn ValueError. With one buyer in ten, two splits
    have none, whatever the seed."""
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in range(10)] + ["u0"], "ts": [0.0] * 10 + [40 * 86400.0]})
    task = build_task(frame, 30 * 86400.0, 30, seed=0)
    assert task.churn.sum() == 9
    with pytest.raises(UserError, match=r"split has \d+ users and \d+ churners"):
        task.check_splits()
    big = pd.concat([frame.assign(user_id=frame.user_id + f"-{k}") for k in range(20)], ignore_index=True)
    build_task(big, 30 * 86400.0, 30, seed=0).check_splits()  # 200 users, 10 % buyers: every split has both


def test_csv_with_clicks_items_and_categories(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,ts,type,item,category,amount,quantity\n"
                    "u1,2020-01-01,click,i1,books,,\n"
                    "u1,2020-01-02,purchase,i1,books,9.5,1\n"
                    "u2,2020-01-03,click,,,,\n"
                    "u2,2020-03-20,purchase,i2,music,3,2\n"
                    "u1,2020-02-11,purchase,i3,,4,1\n")
    frame = load_purchases_csv(path)
    task = build_task(frame, parse_time("2020-02-01"), 30)
    assert list(task.users) == ["u1", "u2"]
    assert task.churn.tolist() == [0, 1]
    assert task.sequences[1] == [{"ts": parse_time("2020-01-03"), "type": "click"}]  # empty cells = absent
    assert task.sequences[0][0]["item"] == "i1" and task.sequences[0][0]["category"] == "books"
    assert task.sequences[0][1]["quantity"] == 1 and task.sequences[0][1]["amount"] == 9.5
    path.write_text("user_id,ts,item_id\nu1,2020-01-01,i9\n")  # item_id, as in events and recs logs
    assert load_purchases_csv(path)["item"].tolist() == ["i9"]
    path.write_text("User_ID,TS,Amount\nu1,2020-01-01,2.5\n")  # header case does not matter
    assert load_purchases_csv(path)[["user_id", "amount"]].values.tolist() == [["u1", 2.5]]
    path.write_text("user_id,ts\nu1,2020-01-01\n,2020-01-02\n  ,2020-01-03\nu2,2020-01-04\n")  # guests skipped
    frame = load_purchases_csv(path)
    assert frame["user_id"].tolist() == ["u1", "u2"] and frame.attrs["rows_without_user"] == 2
    path.write_text("user_id,ts\n,2020-01-01\nu1,2020-01-02\nu2,soon\n")  # the bad ts is named by its file row
    with pytest.raises(UserError, match="'soon' in row 4"):
        load_purchases_csv(path)
    path.write_text("user_id,ts,item,quantity\n007,2020-01-01,7,2\n8,2020-01-02,,1\n")  # ids as written
    frame = load_purchases_csv(path)
    assert frame["user_id"].tolist() == ["007", "8"] and frame["item"].tolist() == ["7", ""]
    assert frame["quantity"].tolist() == [2, 1] and frame["quantity"].dtype.kind == "i"
    path.write_text("user_id,ts,amount\nu1,2020-01-01,lots\n")
    with pytest.raises(UserError, match="non-numeric amount"):
        load_purchases_csv(path)


def test_stream_ring_events_are_understood():
    """The worker's event ring sends clicks with amount 0.0 / quantity 0 and an extra item_id key."""
    ring = [{"ts": 1.0, "type": "click", "item_id": "i1", "item": "i1", "category": "c", "amount": 0.0, "quantity": 0},
            {"ts": 2.0, "type": "purchase", "item_id": "i1", "item": "i1", "category": "c", "amount": 5.0, "quantity": 0}]
    norm = F.normalize_events(ring, 10.0)
    assert norm == [{"ts": 1.0, "type": "click", "item": "i1", "category": "c"},
                    {"ts": 2.0, "type": "purchase", "item": "i1", "category": "c", "amount": 5.0}]
    with pytest.raises(ValueError, match="unknown event type"):
        F.normalize_events([{"ts": 1.0, "type": "view"}], 10.0)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from([f"c{i}" for i in range(30)]), st.floats(0, 1e6)), max_size=120),
       cap=st.integers(1, 40), seed=st.integers(0, 1000))
def test_sampled_users_keep_their_whole_history_and_do_not_depend_on_row_order(rows, cap, seed):
    frame = pd.DataFrame(rows, columns=["user_id", "ts"])
    users = set(frame["user_id"])
    kept, n_users = sample_users(frame, cap)
    assert n_users == len(users)
    chosen = set(kept["user_id"])
    assert len(chosen) == min(cap, len(users))
    assert len(kept) == int(frame["user_id"].isin(chosen).sum())  # every row of a kept user, nothing else
    shuffled = frame.sample(frac=1.0, random_state=seed)
    assert set(sample_users(shuffled, cap)[0]["user_id"]) == chosen
    assert chosen <= set(sample_users(frame, cap + 5)[0]["user_id"])  # a larger cap keeps these users


def test_a_cap_below_one_user_is_a_user_error():
    frame = pd.DataFrame({"user_id": ["a", "b"], "ts": [1.0, 2.0]})
    with pytest.raises(UserError, match="at least 1"):
        sample_users(frame, 0)


def test_the_model_trains_on_the_view_the_stream_serves_it():
    """Training summarised a user's whole history while the worker serves the last 64 events of its ring: a weekly
    buyer of three years got 41 expected purchases served against 83 in training (found by review). The task's
    model input is now the ring's view: the summary of a long history in training equals, bit for bit, the one
    the stream computes from the profile's ring (built by the stream's own update) at the cut-off."""
    from models.churn.summary_batch import summary_of_records
    from tidewater.offer_check import build_profiles

    day = 86400.0
    rows = [("weekly", w * 7 * day + (i % 2) * 0.0, 10.0 + i, 1) for w in range(150) for i in range(1 + (w % 3 == 0))]
    rows += [(f"u{k}", (k % 90) * day, 5.0, 1) for k in range(40)]  # short histories, some churn, some buy later
    rows += [(f"u{k}", 1060 * day + k * day, 5.0, 1) for k in range(0, 40, 2)]
    rows += [("weekly", 1055 * day, 12.0, 1)]
    frame = pd.DataFrame(rows, columns=["user_id", "ts", "amount", "quantity"])
    cutoff = 1050 * day
    task = build_task(frame, cutoff, 60)
    weekly = list(task.users).index("weekly")
    assert task.meta["users_beyond_ring"] == 1 and len(task.sequences[weekly]) > 100
    _, trained = tokenize_task(task.ring_sequences, task.as_of, ChurnConfig())
    profile = build_profiles(frame, cutoff)["weekly"]
    served = summary_of_records([profile.recent], [cutoff])
    assert len(profile.recent) == task.ring_events == 64
    np.testing.assert_array_equal(served[0], trained[weekly])
    _, whole = tokenize_task(task.sequences, task.as_of, ChurnConfig())
    assert not np.array_equal(whole[weekly], trained[weekly])  # the whole history reads differently
    short = list(task.users).index("u1")
    assert task.ring_sequences[short] is task.sequences[short]  # short histories: one list, no copy
    # a worker keeping a longer ring (TIDEWATER_RECENT_EVENTS=128) serves the model its 64-event view all the same
    from tidewater.profile import ProfileConfig
    from tidewater.scoring import RingScorer

    longer = build_profiles(frame, cutoff, ProfileConfig(recent_events=128))["weekly"]
    seen = []

    class Recorder:  # what RingScorer hands to the model
        version, ring_events, uses_encoder = "r", 64, True

        def predict_many(self, sequences, as_of):
            seen.extend(sequences)
            return np.zeros(len(sequences)), np.zeros(len(sequences))

    RingScorer(Recorder()).predict_many([longer.recent], [cutoff])
    assert len(longer.recent) == 128 and [e["ts"] for e in seen[0]] == [e.ts for e in profile.recent]


def test_regression_a_purchases_only_model_sees_the_last_purchases_of_a_longer_ring():
    """A model trained on a log without clicks was trained on each user's last ``ring_events`` purchases. A worker
    keeping a longer ring cut it to the last ``ring_events`` events first and dropped the clicks after, so the
    model saw fewer purchases than it was trained on (found by review)."""
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    ring = [RecentEvent(ts=float(i), type="click" if i % 2 else "purchase", amount=0.0 if i % 2 else 5.0)
            for i in range(8)]
    seen = []

    class PurchasesOnly:
        version, ring_events, uses_encoder, reads_clicks = "p", 4, True, False

        def predict_many(self, sequences, as_of):
            seen.extend(sequences)
            return np.zeros(len(sequences)), np.zeros(len(sequences))

    RingScorer(PurchasesOnly()).predict_many([ring], [10.0])
    assert [e["ts"] for e in seen[0]] == [0.0, 2.0, 4.0, 6.0]  # the last four purchases, no clicks
    seen.clear()
    PurchasesOnly.reads_clicks = True  # a model that reads clicks keeps the last four events
    RingScorer(PurchasesOnly()).predict_many([ring], [10.0])
    assert [e["ts"] for e in seen[0]] == [4.0, 5.0, 6.0, 7.0]


def test_regression_the_horizon_check_reads_the_whole_log_not_the_users_sample():
    """With --max-users the sample's last event stood for the log's: a false "the log ends before the horizon"
    warning, and horizon_covered_by_data false in the JSON (found by review)."""
    from models.churn.data import log_end, sample_users

    from .helpers import cdnow_sample

    frame = cdnow_sample()
    sample, users = sample_users(frame, 20)
    assert users > 20 and float(sample["ts"].max()) < float(frame["ts"].max())
    assert log_end(sample) == float(frame["ts"].max()) and log_end(frame) == float(frame["ts"].max())


def test_event_fields_are_the_optional_columns_with_values_before_the_cutoff():
    from models.churn.data import event_fields

    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "ts": [1.0, 2.0, 5.0], "amount": [3.0, np.nan, 4.0],
                          "quantity": [np.nan, np.nan, 2.0]})
    assert event_fields(frame, 10.0) == ["amount", "quantity"]
    assert event_fields(frame, 3.0) == ["amount"]  # quantities only after the cut-off: the model never sees one
    assert event_fields(frame[["user_id", "ts"]], 10.0) == []


def test_ts_resolution_is_the_coarsest_unit_every_time_before_the_cutoff_is_a_multiple_of():
    from models.churn.data import ts_resolution

    day = 86400.0
    frame = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "ts": [3 * day, 5 * day, 6 * day + 3600, 9 * day + 7]})
    assert ts_resolution(frame, 6 * day) == day  # dates, as CDNOW
    assert ts_resolution(frame, 7 * day) == 3600.0  # and one at 01:00
    assert ts_resolution(frame, 10 * day) == 0.0  # one 7 s past midnight: times as they are
    assert ts_resolution(frame, 0.0) == 0.0  # nothing before the cut-off


def test_id_fields_are_the_item_and_category_columns_with_values_before_the_cutoff():
    from models.churn.data import id_fields

    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "ts": [1.0, 2.0, 5.0], "item": ["x", None, "y"],
                          "category": [None, None, "music"]})
    assert id_fields(frame, 10.0) == ["item", "category"]
    assert id_fields(frame, 3.0) == ["item"]  # categories only after the cut-off: the model never sees one
    assert id_fields(frame[["user_id", "ts"]], 10.0) == []
