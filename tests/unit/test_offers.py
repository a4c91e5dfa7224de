from tidewater.events import Purchase
from tidewater.offers import OfferPolicy, decide
from tidewater.profile import DAY, apply, new_profile


def buyer(amounts, last_ts=0.0):
    p = new_profile("u")
    for i, a in enumerate(amounts):
        apply(p, Purchase(event_id=str(i), user_id="u", ts=last_ts - i, amount=a), "p/0", i, 0.0)
    return p


def test_no_offer_below_threshold_or_without_purchases():
    assert decide(buyer([50.0]), 0.3, 100 * DAY, "inactivity", 0) is None
    assert decide(new_profile("u"), 0.99, 100 * DAY, "inactivity", 0) is None


def test_tiers_by_value_and_reason_codes():
    high = decide(buyer([150.0, 100.0]), 0.9, 100 * DAY, "inactivity", 0)
    assert (high.offer_type, high.discount_pct) == ("discount", 20.0)
    assert set(high.reason_codes) == {"high_churn_risk", "long_inactivity", "high_value"}
    mid = decide(buyer([60.0]), 0.9, 100 * DAY, "activity", 0)
    assert (mid.offer_type, mid.discount_pct, mid.reason_codes) == ("discount", 10.0, ("high_churn_risk",))
    low = decide(buyer([5.0]), 0.9, 100 * DAY, "activity", 0)
    assert low.offer_type == "free_shipping"


def test_cooldown_and_budget():
    p = buyer([60.0])
    p.last_offer_ts = 90 * DAY
    assert decide(p, 0.9, 100 * DAY, "activity", 0) is None  # 10 days < 30-day cooldown
    assert decide(p, 0.9, 121 * DAY, "activity", 0) is not None
    assert decide(buyer([60.0]), 0.9, 100 * DAY, "activity", OfferPolicy().daily_budget) is None
