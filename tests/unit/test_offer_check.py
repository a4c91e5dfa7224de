"""The offline offer check: replay through the stream's profile update, score at the cut-off, lift."""
import numpy as np
import pandas as pd

from tidewater.offer_check import CheckConfig, build_profiles, offer_lift, score_at
from tidewater.placeholders import RecencyHeuristic
from tidewater.profile import DAY


def synthetic_log(n=300, seed=0):
    """Half the customers stop buying 60+ days before the cut-off and never return (churners)."""
    rng = np.random.default_rng(seed)
    rows, churned = [], {}
    for u in range(n):
        leaves = u % 2 == 0
        last = 100 * DAY - (rng.uniform(60, 90) if leaves else rng.uniform(0, 20)) * DAY
        for k in range(int(rng.integers(1, 5))):
            rows.append((f"c{u}", last - k * 7 * DAY, float(rng.uniform(5, 80)), 1))
        churned[f"c{u}"] = leaves
    return pd.DataFrame(rows, columns=["user_id", "ts", "amount", "quantity"]), churned


def test_profiles_are_built_with_the_stream_update_up_to_the_cutoff():
    frame, _ = synthetic_log()
    late = pd.DataFrame([("c1", 150 * DAY, 10.0, 1)], columns=frame.columns)
    profiles = build_profiles(pd.concat([frame, late]), cutoff=100 * DAY)
    counts = frame.groupby("user_id").size()
    assert {u: p.n_purchases for u, p in profiles.items()} == counts.to_dict()  # the late row is not counted
    assert all(p.monetary > 0 and p.recent for p in profiles.values())


def test_offers_target_churners_above_the_base_rate_and_report_the_comparisons():
    frame, churned = synthetic_log()
    profiles = build_profiles(frame, cutoff=100 * DAY)

    def predict(rings, as_of):
        return RecencyHeuristic().score_many(rings, as_of), None

    scores, expected = score_at(profiles, sorted(churned), predict, 100 * DAY)
    result = offer_lift(profiles, churned, scores, expected, 100 * DAY, CheckConfig())
    assert result["customers"] == 300 and result["base_churn_rate"] == 0.5
    assert 0 < result["offers"] <= 150
    assert result["policy"]["lift"] > 1.5  # a score that sees silence finds the leavers
    assert result["recency_targeting"]["lift"] >= result["policy"]["lift"] - 1e-9  # here recency is the truth
    lo, hi = result["random_targeting"]["lift_95ci"]
    assert lo < 1.0 < hi
    assert result["reason_codes"]["high_churn_risk"] == result["offers"]


def test_a_score_that_knows_nothing_gives_no_lift():
    frame, churned = synthetic_log()
    profiles = build_profiles(frame, cutoff=100 * DAY)
    users = sorted(churned)
    # scores across the threshold (0.6), so that they decide who is offered: from [0.6, 1] every customer passed
    # it and the value rule alone chose, whatever the scores (found by review)
    scores = np.random.default_rng(1).uniform(0.0, 1.0, len(users))
    result = offer_lift(profiles, churned, scores, None, 100 * DAY, CheckConfig())
    everyone = offer_lift(profiles, churned, np.ones(len(users)), None, 100 * DAY, CheckConfig())
    assert 0 < result["offers"] < 0.6 * everyone["offers"]  # the scores cut the offers: about 40 % pass
    assert abs(result["policy"]["lift"] - 1.0) < 0.2


def test_customers_without_a_churner_give_no_lift_instead_of_dividing_by_zero():
    frame, churned = synthetic_log()
    profiles = build_profiles(frame, cutoff=100 * DAY)
    nobody = {user: False for user in churned}
    scores = np.full(len(nobody), 0.9)
    result = offer_lift(profiles, nobody, scores, None, 100 * DAY, CheckConfig())
    assert result["offers"] > 0 and result["policy"] == {"churn_rate": 0.0, "lift": None}


def test_regression_a_model_trained_on_a_sample_is_checked_on_its_own_held_out_users():
    """The check rebuilt the split on the whole log, so for a model trained with --max-users about 29 % of its
    test users had been training or validation users (found by review)."""
    from models.churn.data import build_task, sample_users
    from tidewater.offer_check import held_out_task

    frame, _ = synthetic_log(n=400)
    frame = pd.concat([frame, frame.assign(ts=frame["ts"] + 150 * DAY)])  # purchases in the horizon too
    meta = {"cutoff": "1970-04-11", "horizon_days": 100.0, "seed": 3, "max_users": 250}
    _, task = held_out_task(frame, meta)
    trained = build_task(sample_users(frame, 250)[0], task.cutoff, 100.0, seed=3)  # what `train churn` built
    assert set(task.users) == set(trained.users) and len(task.users) == 250
    assert set(task.users[task.split == "test"]) == set(trained.users[trained.split == "test"])
