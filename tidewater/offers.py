"""Retention-offer policy: plain functions, event time only, reason codes that say why."""
from __future__ import annotations

from dataclasses import dataclass

from tidewater.profile import DAY, Profile, hopping_counts


@dataclass(frozen=True)
class OfferTier:
    min_monetary: float
    offer_type: str
    discount_pct: float


DEFAULT_TIERS = (
    OfferTier(200.0, "discount", 20.0),
    OfferTier(50.0, "discount", 10.0),
    OfferTier(0.01, "free_shipping", 0.0),
)


@dataclass(frozen=True)
class OfferPolicy:
    churn_threshold: float = 0.6
    cooldown_s: float = 30 * DAY
    daily_budget: int = 500
    min_purchases: int = 1
    high_value_monetary: float = 200.0
    validity_s: float = 14 * DAY
    tiers: tuple[OfferTier, ...] = DEFAULT_TIERS


@dataclass(frozen=True)
class OfferDecision:
    offer_type: str
    discount_pct: float
    reason_codes: tuple[str, ...]
    expires_at: float


def reason_codes(profile: Profile, score: float, as_of: float, trigger: str, policy: OfferPolicy) -> list[str]:
    codes = []
    if score >= policy.churn_threshold:
        codes.append("high_churn_risk")
    if trigger == "inactivity":
        codes.append("long_inactivity")
    if profile.monetary >= policy.high_value_monetary:
        codes.append("high_value")
    if activity_dropped(profile, as_of):
        codes.append("activity_drop")
    return codes


def activity_dropped(profile: Profile, as_of: float) -> bool:
    """Anomaly: the last 7 days hold under a quarter of the user's own average week of the last 4."""
    weeks = hopping_counts(profile, as_of, size_days=7, hop_days=7, hops=4)
    earlier = weeks[1:]
    baseline = sum(earlier) / len(earlier)
    return baseline >= 2.0 and weeks[0] < 0.25 * baseline


def decide(profile: Profile, score: float, as_of: float, trigger: str, budget_used_today: int,
           policy: OfferPolicy = OfferPolicy()) -> OfferDecision | None:
    """An offer, or None: not at risk, not worth it, in cooldown, or the day's budget is spent."""
    if score < policy.churn_threshold:
        return None
    if profile.n_purchases < policy.min_purchases:
        return None
    if profile.last_offer_ts and as_of - profile.last_offer_ts < policy.cooldown_s:
        return None
    if budget_used_today >= policy.daily_budget:
        return None
    tier = next((t for t in policy.tiers if profile.monetary >= t.min_monetary), None)
    if tier is None:
        return None
    codes = reason_codes(profile, score, as_of, trigger, policy)
    return OfferDecision(tier.offer_type, tier.discount_pct, tuple(codes), as_of + policy.validity_s)
