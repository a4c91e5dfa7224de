"""Offline check of the offer policy on a purchase log (CDNOW by default): do offers reach customers who churn?

The calibration period is replayed through the stream's own pure functions (``profile.apply`` builds each
customer's profile and ring of recent events), every customer is scored at the cut-off by the churn model and
the offer policy decides as it would in the stream (trigger ``inactivity`` when the customer has been silent
for at least the inactivity gap), with no offer made before and the day's budget left aside: this measures whom
the policy targets, not how many offers one day's budget allows. The outcome is the churn label of the horizon
after the cut-off.

Reported on the model's held-out test customers (the split seed and cut-off come from the model's registry
metadata, so no customer the model was trained or calibrated on is counted): the offered fraction, the churn
rate among offered customers against the base rate (lift), and the lift of two other ways of spending the same
number of offers: random targeting (expected lift 1, with a seeded 95 % interval) and recency targeting (the
longest-silent customers first).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from tidewater import offers as offer_policy
from tidewater.events import Purchase
from tidewater.profile import DAY, Profile, ProfileConfig, apply, new_profile


@dataclass(frozen=True)
class CheckConfig:
    inactivity_gap_s: float = 30 * DAY
    policy: offer_policy.OfferPolicy = offer_policy.OfferPolicy()
    profile: ProfileConfig = ProfileConfig()
    random_draws: int = 2000
    seed: int = 0


def held_out_task(frame: pd.DataFrame, meta: dict[str, Any]):
    """The model's churn task rebuilt as it was trained, from its registry metadata: the same cut-off, horizon,
    split seed and, for a model trained on a sample (``--max-users``), the same users; so its test users are the
    ones it never saw. (The log as used, the task.)"""
    from models.churn.data import build_task, parse_time, sample_users

    if meta.get("max_users"):
        frame, _ = sample_users(frame, int(meta["max_users"]))
    task = build_task(frame, parse_time(meta["cutoff"][:10]), float(meta["horizon_days"]),
                      seed=int(meta.get("seed", 0)))
    return frame, task


def build_profiles(frame: pd.DataFrame, cutoff: float, config: ProfileConfig = ProfileConfig()) -> dict[str, Profile]:
    """Replay the purchases before the cut-off in event-time order into profiles (the stream's ``apply``)."""
    calib = frame[frame["ts"] < cutoff].sort_values(["ts", "user_id"], kind="stable")
    profiles: dict[str, Profile] = {}
    amounts = calib["amount"].to_numpy() if "amount" in calib else np.zeros(len(calib))
    quantities = calib["quantity"].to_numpy() if "quantity" in calib else np.ones(len(calib))
    watermark = 0.0
    for offset, (user, ts, amount, quantity) in enumerate(zip(calib["user_id"].astype(str), calib["ts"].astype(float),
                                                              amounts, quantities)):
        profile = profiles.get(user)
        if profile is None:
            profile = profiles[user] = new_profile(user)
        event = Purchase(event_id=f"row-{offset}", user_id=user, ts=ts, amount=float(amount),
                         quantity=max(1, int(quantity)), category="music")
        apply(profile, event, "purchases/0", offset, watermark, config)
        watermark = max(watermark, ts)
    return profiles


def score_at(profiles: dict[str, Profile], users: list[str], predict: Callable[[list, list], Any],
             cutoff: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(churn probabilities, expected purchases or None) of ``users`` at the cut-off, in one batched call."""
    scores, expected = predict([profiles[u].recent for u in users], [cutoff] * len(users))
    return np.asarray(scores, np.float64), None if expected is None else np.asarray(expected, np.float64)


def offer_lift(profiles: dict[str, Profile], churned: dict[str, bool], scores: np.ndarray,
               expected: np.ndarray | None, cutoff: float, config: CheckConfig = CheckConfig()) -> dict[str, Any]:
    """Offers at the cut-off for the customers in ``churned`` (scored in sorted user order) and how well they
    target churners."""
    users = sorted(churned)
    y = np.array([churned[u] for u in users], dtype=bool)
    offered = np.zeros(len(users), dtype=bool)
    reasons: dict[str, int] = {}
    for i, user in enumerate(users):
        p = profiles[user]
        trigger = "inactivity" if cutoff - p.last_ts >= config.inactivity_gap_s else "activity"
        exp = None if expected is None else float(expected[i])
        decision = offer_policy.decide(p, float(scores[i]), cutoff, trigger, 0, config.policy, expected_purchases=exp)
        if decision is not None:
            offered[i] = True
            for code in decision.reason_codes:
                reasons[code] = reasons.get(code, 0) + 1
    base = float(y.mean())
    n_offered = int(offered.sum())
    result: dict[str, Any] = {
        "customers": len(users), "base_churn_rate": round(base, 4), "offers": n_offered,
        "offered_fraction": round(n_offered / len(users), 4), "reason_codes": dict(sorted(reasons.items())),
    }
    if n_offered == 0:
        result.update(policy={"churn_rate": None, "lift": None})
        return result
    rate = float(y[offered].mean())
    if base == 0:  # no churner among these customers: a lift is not defined
        result.update(policy={"churn_rate": round(rate, 4), "lift": None}, note="no churner among these customers")
        return result
    result["policy"] = {"churn_rate": round(rate, 4), "lift": round(rate / base, 4)}
    # the same number of offers spent on the longest-silent customers
    recency = np.array([cutoff - profiles[u].last_ts for u in users])
    by_recency = np.argsort(-recency, kind="stable")[:n_offered]
    r_rate = float(y[by_recency].mean())
    result["recency_targeting"] = {"churn_rate": round(r_rate, 4), "lift": round(r_rate / base, 4)}
    # ... and on random customers
    rng = np.random.default_rng(config.seed)
    draws = np.array([y[rng.choice(len(users), n_offered, replace=False)].mean() for _ in range(config.random_draws)])
    lo, hi = np.percentile(draws / base, [2.5, 97.5])
    result["random_targeting"] = {"churn_rate": round(float(draws.mean()), 4), "lift": round(float(draws.mean() / base), 4),
                                  "lift_95ci": [round(float(lo), 4), round(float(hi), 4)]}
    # model ranking alone at the same fraction (what the policy's value and cooldown rules change)
    by_score = np.argsort(-np.asarray(scores), kind="stable")[:n_offered]
    s_rate = float(y[by_score].mean())
    result["score_targeting"] = {"churn_rate": round(s_rate, 4), "lift": round(s_rate / base, 4)}
    return result


def run_check(registry_dir: str, config: CheckConfig = CheckConfig(), frame: pd.DataFrame | None = None,
              split: str = "test") -> dict[str, Any]:
    """The check on the current churn model's own data, cut-off and held-out test customers."""
    from models.registry import Registry
    from models.churn.scorer import ChurnScorer
    from tidewater.scoring import RingScorer

    registry = Registry(f"{registry_dir}/churn")
    meta = registry.meta()
    if meta.get("dataset") not in ("cdnow_master", None) and frame is None:
        raise ValueError(f"the current churn model was trained on {meta.get('dataset')}: pass that purchase log "
                         f"with --purchases")
    if frame is None:
        from models.datasets import load_cdnow

        frame = load_cdnow(sample=False)
    frame, task = held_out_task(frame, meta)
    cutoff = task.cutoff
    chosen = task.split == split
    churned = {str(u): bool(c) for u, c in zip(task.users[chosen], task.churn[chosen])}
    profiles = build_profiles(frame, cutoff, config.profile)
    scorer = RingScorer(ChurnScorer.load(registry.current_path()))
    scores, expected = score_at(profiles, sorted(churned), scorer.predict_many, cutoff)
    result = offer_lift(profiles, churned, scores, expected, cutoff, config)
    # the same threshold without the value rule: what keeping only customers worth an offer costs in lift
    no_value = dataclasses.replace(config, policy=dataclasses.replace(config.policy, min_value=0.0))
    plain = offer_lift(profiles, churned, scores, expected, cutoff, no_value)
    result["policy_without_value_rule"] = {"offered_fraction": plain["offered_fraction"], **plain["policy"]}
    return {"dataset": meta.get("dataset"), "model_version": scorer.version, "cutoff": meta["cutoff"],
            "horizon_days": meta["horizon_days"], "split": split, **result}
