"""Retention-offer policy: plain functions, event time only, reason codes that say why.

An offer goes out when the churn probability is at or above the threshold, the customer is worth keeping
(their value: spend so far plus the spend the model still expects in its horizon), the per-user cooldown has
passed and the partition's budget for the event-time day is not spent. The tier (offer type and discount)
follows the value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tidewater.profile import DAY, Profile, events_between


@dataclass(frozen=True)
class OfferTier:
    min_value: float
    offer_type: str
    discount_pct: float


DEFAULT_TIERS = (
    OfferTier(200.0, "discount", 20.0),
    OfferTier(50.0, "discount", 10.0),
    OfferTier(0.0, "free_shipping", 0.0),
)


def parse_tiers(text: str) -> tuple[OfferTier, ...]:
    """Tiers written ``min_value:offer_type:discount_pct``, comma-separated (``TIDEWATER_OFFER_TIERS``). Raises
    ValueError saying what is wrong with a tier."""
    tiers = []
    for part in (p.strip() for p in text.split(",")):
        fields = part.split(":")
        if len(fields) != 3 or not fields[1].strip():
            raise ValueError(f"tier {part!r}: expected min_value:offer_type:discount_pct, e.g. 50:discount:10")
        try:
            min_value, discount = float(fields[0]), float(fields[2])
        except ValueError:
            raise ValueError(f"tier {part!r}: min_value and discount_pct must be numbers") from None
        if not (math.isfinite(min_value) and min_value >= 0 and 0 <= discount <= 100):
            raise ValueError(f"tier {part!r}: min_value must be >= 0 and discount_pct within 0..100")
        tiers.append(OfferTier(min_value, fields[1].strip(), discount))
    if len({t.min_value for t in tiers}) != len(tiers):
        raise ValueError("two tiers have the same min_value")
    return tuple(tiers)  # OfferPolicy orders them


@dataclass(frozen=True)
class OfferPolicy:
    # A calibrated probability. The model's scores rise as silence grows (the stream re-scores at 30, 60, ...
    # days), so a customer drifting away crosses it.
    churn_threshold: float = 0.6
    # at least this long between two offers to a user, and one offer per lapse: none again until the customer has
    # come back (an event after the offer). The cooldown alone is shorter than the re-scoring steps (30 to 180
    # days of silence), so a silent customer got a second offer 90 days after the first.
    cooldown_s: float = 90 * DAY
    daily_budget: int = 500  # offers per event-time day, all partitions together (see partition_budget)
    min_purchases: int = 1
    min_value: float = 20.0  # customers worth less than this are not worth a discount
    high_value: float = 200.0
    validity_s: float = 14 * DAY
    tiers: tuple[OfferTier, ...] = DEFAULT_TIERS

    def __post_init__(self) -> None:
        # highest min_value first, whatever order they were configured in: decide takes the first one reached
        object.__setattr__(self, "tiers", tuple(sorted(self.tiers, key=lambda t: -t.min_value)))


@dataclass(frozen=True)
class OfferDecision:
    offer_type: str
    discount_pct: float
    reason_codes: tuple[str, ...]
    expires_at: float
    customer_value: float


def partition_budget(daily_budget: int, partition: int, partitions: int, day: int = 0) -> int:
    """This partition's share of the global daily offer budget on event-time day ``day``: ``daily_budget //
    partitions``, plus one for ``daily_budget % partitions`` partitions, which turn with the day. The shares add
    up to the budget exactly every day, with no coordination between workers (users are spread over partitions by
    key hash, so the shares fit the demand on average), and over any ``partitions`` days in a row each partition
    gets the budget once. (The extra ones always went to the lowest partitions: below one offer per partition,
    the users of the others could never get one; found by review.)"""
    partitions = max(1, int(partitions))
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} outside 0..{partitions - 1}")
    return daily_budget // partitions + (1 if (partition - day) % partitions < daily_budget % partitions else 0)


def customer_value(profile: Profile, expected_purchases: float | None = None) -> float:
    """Spend so far plus expected spend in the model's horizon (expected purchases x average order). The churn
    model counts purchases as orders (purchase lines at one time are one), so the average is per order: per line,
    it undervalued customers by their lines per order (about 20x on invoice-style logs; found by review)."""
    if profile.n_purchases == 0:
        return 0.0
    average_order = profile.monetary / max(1, profile.n_orders)
    return round(profile.monetary + max(0.0, expected_purchases or 0.0) * average_order, 2)


def reason_codes(profile: Profile, score: float, as_of: float, trigger: str, policy: OfferPolicy,
                 value: float | None = None) -> list[str]:
    codes = []
    if score >= policy.churn_threshold:
        codes.append("high_churn_risk")
    if trigger == "inactivity":
        codes.append("long_inactivity")
    if (profile.monetary if value is None else value) >= policy.high_value:
        codes.append("high_value")
    if activity_dropped(profile, as_of):
        codes.append("activity_drop")
    return codes


def activity_dropped(profile: Profile, as_of: float) -> bool:
    """Anomaly: the last 7 days (to ``as_of``, today's events included) hold under a quarter of the user's own
    average week over their last 3 active weeks: the 3 weeks before the last 7 days, or, for a user silent for
    longer, the 3 weeks up to their last event (a customer who stopped coming is scored only once silence has
    lasted a month, when the 3 weeks before the last 7 days are empty too)."""
    end = math.ceil(as_of / DAY) * DAY
    recent = events_between(profile, end - 7 * DAY, end)
    base_end = min(end - 7 * DAY, math.floor(profile.last_ts / DAY) * DAY + DAY)
    baseline = events_between(profile, base_end - 21 * DAY, base_end) / 3
    return baseline >= 2.0 and recent < 0.25 * baseline


def within_budget(wanted: list[tuple[Profile, float, OfferDecision]], room: int
                  ) -> list[tuple[Profile, float, OfferDecision]]:
    """The offers a tick may make with ``room`` left in the day's budget: the most value at risk first (churn
    probability × customer value), then the higher risk, then the user id (deterministic). In the order they came
    (user id), a short budget went to the same low-sorting ids every day whatever their risk or value."""
    if len(wanted) <= room:
        return wanted
    ranked = sorted(range(len(wanted)), key=lambda i: (-wanted[i][1] * wanted[i][2].customer_value, -wanted[i][1],
                                                       wanted[i][0].user_id))
    return [wanted[i] for i in sorted(ranked[:max(0, room)])]  # emitted in the tick's order, as before


def decide(profile: Profile, score: float, as_of: float, trigger: str, budget_used_today: int,
           policy: OfferPolicy = OfferPolicy(), *, expected_purchases: float | None = None) -> OfferDecision | None:
    """An offer, or None: not at risk (or no valid score), not worth it, in cooldown, or the day's budget is
    spent. ``trigger`` "inactivity": the customer has been silent for at least the inactivity gap (the reason
    ``long_inactivity``), whatever triggered the score."""
    if not score >= policy.churn_threshold:  # also False for NaN: no offer on a score that is not a number
        return None
    if profile.n_purchases < policy.min_purchases:
        return None
    if profile.last_offer_ts and (as_of - profile.last_offer_ts < policy.cooldown_s
                                  or profile.last_ts <= profile.last_offer_ts):
        return None  # in cooldown, or the lapse already had its offer: nothing from the customer since
    if budget_used_today >= policy.daily_budget:
        return None
    value = customer_value(profile, expected_purchases)
    if value < policy.min_value:
        return None
    tier = next((t for t in policy.tiers if value >= t.min_value), None)
    if tier is None:
        return None
    codes = reason_codes(profile, score, as_of, trigger, policy, value)
    return OfferDecision(tier.offer_type, tier.discount_pct, tuple(codes), as_of + policy.validity_s, value)
