"""The offline offer check: replay through the stream's profile update, score at the cut-off, lift."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from tidewater.offer_check import CheckConfig, build_profiles, offer_lift, run_check, score_at
from tidewater.placeholders import RecencyHeuristic
from tidewater.profile import DAY

COLUMNS = ["user_id", "ts", "amount", "quantity"]
CUTOFF = 100 * DAY


def synthetic_log(n=300, seed=0):
    """Half the customers stop buying 60+ days before the cut-off and never return (churners)."""
    rng = np.random.default_rng(seed)
    rows, churned = [], {}
    for u in range(n):
        leaves = u % 2 == 0
        last = CUTOFF - (rng.uniform(60, 90) if leaves else rng.uniform(0, 20)) * DAY
        for k in range(int(rng.integers(1, 5))):
            rows.append((f"c{u}", last - k * 7 * DAY, float(rng.uniform(5, 80)), 1))
        churned[f"c{u}"] = leaves
    return pd.DataFrame(rows, columns=COLUMNS), churned


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


# --- found by mutation testing (twenty-sixth session): behaviours no test pinned

def test_a_purchase_at_the_cutoff_itself_is_not_replayed():
    """Features use only events strictly before the cut-off (the churn task's ``ts < c``): a purchase timed at the
    cut-off belongs to the horizon."""
    frame = pd.DataFrame([("a", CUTOFF - 1.0, 10.0, 1), ("a", CUTOFF, 20.0, 1), ("b", CUTOFF, 5.0, 1)], columns=COLUMNS)
    profiles = build_profiles(frame, CUTOFF)
    assert set(profiles) == {"a"}
    assert profiles["a"].n_purchases == 1 and profiles["a"].monetary == 10.0


def test_purchase_quantities_are_replayed_and_default_to_one():
    """The log's quantity reaches the profile (a quantity below 1 counts as 1); a log without a quantity column
    counts one item per row."""
    frame = pd.DataFrame([("a", 10.0, 10.0, 3), ("a", 20.0, 10.0, 0), ("b", 30.0, 5.0, 1)], columns=COLUMNS)
    profiles = build_profiles(frame, CUTOFF)
    assert profiles["a"].quantity == 4 and profiles["b"].quantity == 1
    without = build_profiles(frame.drop(columns=["quantity"]), CUTOFF)
    assert without["a"].quantity == 2 and without["b"].quantity == 1


def test_silence_of_at_least_thirty_days_triggers_the_inactivity_reason():
    """The check decides as the stream does: a customer silent for at least the inactivity gap (30 days by
    default, the worker's TIDEWATER_INACTIVITY_GAP_S default) is offered with ``long_inactivity``, one silent for
    less is not."""
    from tidewater.settings import Settings

    assert CheckConfig().inactivity_gap_s == Settings().inactivity_gap_s == 30 * DAY
    silence = {"at_gap": 30 * DAY, "just_under": 30 * DAY - 60.0, "long": 45 * DAY, "longer": 80 * DAY}
    frame = pd.DataFrame([(u, CUTOFF - s - k * DAY, 50.0, 1) for u, s in silence.items() for k in range(3)],
                         columns=COLUMNS)
    profiles = build_profiles(frame, CUTOFF)
    churned = {u: True for u in silence}
    result = offer_lift(profiles, churned, np.full(len(churned), 0.95), None, CUTOFF, CheckConfig())
    assert result["offers"] == 4, result
    assert result["reason_codes"].get("long_inactivity") == 3, result["reason_codes"]  # all but just_under


def test_the_report_divides_offers_and_churn_rates_consistently():
    """``offered_fraction`` is offers / customers, and every lift is that way of targeting's churn rate divided by
    the base rate (the random one too)."""
    frame, churned = synthetic_log()
    profiles = build_profiles(frame, CUTOFF)
    users = sorted(churned)
    scores = RecencyHeuristic().score_many([profiles[u].recent for u in users], [CUTOFF] * len(users))
    result = offer_lift(profiles, churned, np.asarray(scores), None, CUTOFF, CheckConfig())
    assert result["offered_fraction"] == round(result["offers"] / result["customers"], 4)
    base = result["base_churn_rate"]
    for way in ("policy", "recency_targeting", "random_targeting", "score_targeting"):
        assert result[way]["lift"] == pytest.approx(result[way]["churn_rate"] / base, abs=1e-3), way


def test_score_targeting_offers_the_highest_scores():
    """The model-ranking comparison spends the offers on the customers with the *highest* scores: with scores
    that are the outcome itself it finds only churners."""
    frame, churned = synthetic_log()
    profiles = build_profiles(frame, CUTOFF)
    users = sorted(churned)
    perfect = np.array([0.99 if churned[u] else 0.01 for u in users])
    result = offer_lift(profiles, churned, perfect, None, CUTOFF, CheckConfig())
    assert result["score_targeting"] == {"churn_rate": 1.0, "lift": 2.0}


def test_random_targeting_draws_distinct_customers():
    """Random targeting spends the same number of offers on distinct customers (drawn without replacement): when
    everyone is offered, every draw is the whole population, so its lift is exactly 1."""
    frame, churned = synthetic_log(n=40)
    profiles = build_profiles(frame, CUTOFF)
    config = CheckConfig(random_draws=200)
    config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, min_value=0.0))
    everyone = offer_lift(profiles, churned, np.ones(len(churned)), None, CUTOFF, config)
    assert everyone["offers"] == everyone["customers"] == 40, everyone
    assert everyone["random_targeting"] == {"churn_rate": 0.5, "lift": 1.0, "lift_95ci": [1.0, 1.0]}


def test_no_offer_at_all_reports_an_undefined_policy_rate():
    """When the policy offers no one the report still has a ``policy`` entry, with no churn rate and no lift
    (run_check reads it)."""
    frame, churned = synthetic_log(n=20)
    profiles = build_profiles(frame, CUTOFF)
    result = offer_lift(profiles, churned, np.zeros(len(churned)), None, CUTOFF, CheckConfig())
    assert result["offers"] == 0 and result["offered_fraction"] == 0.0
    assert result["policy"] == {"churn_rate": None, "lift": None}


def test_held_out_task_without_a_seed_in_the_metadata_uses_seed_zero():
    """Registry metadata written before the seed was recorded: the split is rebuilt with seed 0, the training
    default."""
    from models.churn.data import build_task
    from tidewater.offer_check import held_out_task

    frame, _ = synthetic_log(n=200)
    frame = pd.concat([frame, frame.assign(ts=frame["ts"] + 150 * DAY)])
    _, task = held_out_task(frame, {"cutoff": "1970-04-11", "horizon_days": 100.0})
    trained = build_task(frame, task.cutoff, 100.0, seed=0)
    assert list(task.users[task.split == "test"]) == list(trained.users[trained.split == "test"])


@pytest.fixture
def fake_registry(monkeypatch):
    """run_check with a registry, a churn scorer and the CDNOW loader stood in for (no model files)."""
    import models.churn.scorer
    import models.datasets
    import models.registry
    import tidewater.scoring

    meta = {"dataset": "mylog", "cutoff": "1970-04-11", "horizon_days": 100.0, "seed": 3}

    class Registry:
        def __init__(self, root):
            self.root = root

        def meta(self):
            return dict(meta)

        def current_path(self):
            return "/nowhere"

    class Ring:
        version = "churn-test-1"

        def __init__(self, model):
            pass

        def predict_many(self, rings, as_of):
            return RecencyHeuristic().score_many(rings, as_of), None

    def no_cdnow(**_):
        raise AssertionError("the CDNOW log was loaded")

    monkeypatch.setattr(models.registry, "Registry", Registry)
    monkeypatch.setattr(models.churn.scorer.ChurnScorer, "load", staticmethod(lambda path: object()))
    monkeypatch.setattr(tidewater.scoring, "RingScorer", Ring)
    monkeypatch.setattr(models.datasets, "load_cdnow", no_cdnow)
    frame, _ = synthetic_log(n=300)
    number = frame["user_id"].str[1:].astype(int)
    frame.loc[number % 3 == 0, "amount"] = 0.1  # worth less than 1: any value rule refuses them
    frame = pd.concat([frame, frame[number % 2 == 1].assign(ts=lambda f: f["ts"] + 30 * DAY)])
    return meta, frame


def test_run_check_reports_on_the_given_log_and_its_held_out_split(fake_registry):
    """A model trained on another log than CDNOW is checked on the log passed in (never CDNOW), on the
    customers of the requested split only, and the report adds the policy without its value rule."""
    meta, frame = fake_registry
    from models.churn.data import build_task, parse_time

    result = run_check("/reg", CheckConfig(random_draws=50), frame=frame, split="test")
    task = build_task(frame, parse_time("1970-04-11"), 100.0, seed=3)
    assert result["dataset"] == "mylog" and result["split"] == "test" and result["model_version"] == "churn-test-1"
    assert result["customers"] == int((task.split == "test").sum())
    no_value = result["policy_without_value_rule"]
    assert no_value["offered_fraction"] > result["offered_fraction"]
    plain = CheckConfig(random_draws=50)
    plain = dataclasses.replace(plain, policy=dataclasses.replace(plain.policy, min_value=0.0))
    churned = {str(u): bool(c) for u, c, s in zip(task.users, task.churn, task.split) if s == "test"}
    profiles = build_profiles(frame, task.cutoff)
    scores, _ = score_at(profiles, sorted(churned),
                         lambda r, a: (RecencyHeuristic().score_many(r, a), None), task.cutoff)
    expect = offer_lift(profiles, churned, scores, None, task.cutoff, plain)
    assert no_value == {"offered_fraction": expect["offered_fraction"], **expect["policy"]}


def test_run_check_refuses_a_model_of_another_log_without_that_log(fake_registry):
    """The current model was trained on another log than CDNOW: without ``frame`` the check refuses (it would
    otherwise measure the model on a log it never saw) and says to pass --purchases."""
    with pytest.raises(ValueError, match="--purchases"):
        run_check("/reg", CheckConfig(random_draws=50))
