"""Profiles silent for ``profile_ttl_s`` are deleted at a tick (event time), so a partition's store does not keep
every user ever seen; a user seen again starts a new profile."""
from __future__ import annotations

import dataclasses
import json

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from tidewater.engine import EngineConfig, PartitionEngine, run_to_completion
from tidewater.errors import InvalidSetting
from tidewater.events import Click
from tidewater.profile import DAY
from tidewater.settings import Settings

from .test_engine import DictStore, records, run, shop
from .test_engine_models import EncodedStore, _drive, _restarted, batch_writes, boot, write_back

# inactivity scores 10 and 15 days after the last event; the profile goes after 25
TTL = EngineConfig(inactivity_gap_s=10 * DAY, inactivity_rescore_s=5 * DAY, inactivity_rescores=1,
                   profile_ttl_s=25 * DAY)


def replay(events, config=TTL, batch=50):
    return run(records(events), batch, config)


def about(result, user):
    return [json.loads(o.value) for o in result.outputs if o.key == user.encode()]


def test_a_silent_profile_goes_after_its_last_inactivity_score_and_active_ones_stay():
    evs = shop(n_users=5, days=60)  # u4 last comes on day 20, u3 on day 30 (see shop); the input ends on day 60
    last = {e.user_id: e.ts for e in evs}
    engine, store, result = replay(evs)
    gone = {u for u, ts in last.items() if int(ts // DAY) < int((evs[-1].ts - TTL.profile_ttl_s) // DAY)}
    assert gone == {"u3", "u4"}
    assert set(store) == set(last) - gone and result.erased == gone
    assert engine.counters[("profiles_expired", "clock")] == 2
    for user in gone:  # both inactivity scores went out first, and nothing after the expiry
        silent = [s["as_of"] for s in about(result, user) if s.get("trigger") == "inactivity"]
        assert [round((t - last[user]) / DAY) for t in silent] == [11, 16]  # the tick after 10 and 15 days
        assert max(o["as_of"] for o in about(result, user)) < last[user] + TTL.profile_ttl_s
    _, kept, _ = replay(evs, config=EngineConfig(inactivity_gap_s=10 * DAY, inactivity_rescore_s=5 * DAY,
                                                 inactivity_rescores=1))
    assert set(kept) == set(last)  # 0: kept for ever
    for user in store:  # the others are untouched
        assert msgspec.msgpack.encode(store[user]) == msgspec.msgpack.encode(kept[user])


def test_a_user_seen_again_after_the_expiry_starts_a_new_profile():
    evs = shop(n_users=5, days=60) + [Click(event_id="back", user_id="u4", ts=59 * DAY + 5, item_id="i1")]
    evs.sort(key=lambda e: e.ts)
    _, store, result = replay(evs)
    assert store["u4"].n_events == 1 and store["u4"].first_ts == 59 * DAY + 5
    assert "u4" not in result.erased


def test_a_late_event_older_than_the_expiry_makes_no_lasting_profile():
    """A user's first event arriving after the expiry passed its day: no scan of the index reaches that day
    again, so its profile is expired at the next tick; with a newer event before that tick it stays."""
    busy = [Click(event_id=f"b{d}", user_id="busy", ts=d * DAY + 7, item_id="i0") for d in range(80)]
    late = Click(event_id="late", user_id="old", ts=2 * DAY, item_id="i1")  # after day 69's event and tick
    engine, store, result = replay(busy[:70] + [late] + busy[70:], batch=1)
    assert "old" not in store and "old" in result.erased
    assert engine.counters[("profiles_expired", "clock")] == 1
    newer = Click(event_id="new", user_id="old", ts=69 * DAY + 8, item_id="i2")  # before day 70's tick
    _, store, _ = replay(busy[:70] + [late, newer] + busy[70:], batch=1)
    assert store["old"].n_events == 2


def expected_profiles(events, ttl_days: int) -> dict[str, int]:
    """A model of the rule, for in-order input and daily ticks: ticks fire at each midnight up to the last event,
    before the events at or after it; at the tick T a profile whose last event's day is before day(T - ttl) goes;
    an event adds to the user's profile, or starts one. user -> events in the profile at the end."""
    held: dict[str, list[float]] = {}
    next_tick = (events[0][0] // DAY + 1) * DAY
    for ts, user in events:
        while next_tick <= ts:
            horizon = int((next_tick - ttl_days * DAY) // DAY)
            for u in [u for u, stamps in held.items() if int(max(stamps) // DAY) < horizon]:
                del held[u]
            next_tick += DAY
        held.setdefault(user, []).append(ts)
    return {u: len(stamps) for u, stamps in held.items()}


@settings(max_examples=60, deadline=None)
@given(ttl_days=st.integers(4, 12), batch=st.integers(1, 30),
       visits=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 40),
                                 st.sampled_from([0.0, 1.0, 43_200.0, DAY - 1.0])), min_size=1, max_size=30))
def test_the_stored_profiles_are_exactly_those_the_rule_keeps(ttl_days, batch, visits):
    """Invariant, in-order input, daily ticks, any batching: what the store holds at the end is what the rule
    keeps, each profile with the events since its user's last expiry."""
    evs = sorted((d * DAY + off, user) for user, d, off in visits)
    config = EngineConfig(inactivity_gap_s=2 * DAY, inactivity_rescore_s=DAY, inactivity_rescores=1,
                          profile_ttl_s=ttl_days * DAY)
    store = DictStore()
    run_to_completion(PartitionEngine(0, config, store),
                      records([Click(event_id=f"e{i}", user_id=u, ts=ts) for i, (ts, u) in enumerate(evs)]),
                      batch=batch)
    assert {u: p.n_events for u, p in store.items()} == expected_profiles(evs, ttl_days)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 40), data=st.data())
def test_a_crash_after_any_batch_then_restart_gives_the_uninterrupted_outputs_and_profiles(batch, data):
    """Recovery as the worker does it (see test_engine_models): the expiry's progress is in the partition state,
    the deletions in the store; the activity index rebuilt from the stored profiles keeps what expiry needs."""
    evs = shop(n_users=5, days=60) + [Click(event_id="back", user_id="u4", ts=55 * DAY + 5, item_id="i1")]
    recs = records(sorted(evs, key=lambda e: e.ts))
    crash_after = data.draw(st.integers(0, -(-len(recs) // batch) - 1), label="crash_after")
    store = EncodedStore()
    before = _drive(PartitionEngine(0, TTL, store), store, recs[:(crash_after + 1) * batch], batch, finish=False)
    done = {(r.topic, r.offset) for _, d, _ in before for r in d}
    restarted, redelivered = _restarted(TTL, store, before[-1][2], recs, done)
    after = _drive(restarted, store, redelivered, batch)
    fresh = EncodedStore()
    uninterrupted = _drive(PartitionEngine(0, TTL, fresh), fresh, recs, batch)

    def values(parts):
        return [o.value for outputs, _, _ in parts for o in outputs]

    assert values(before + after) == values(uninterrupted)
    assert dict(store) == dict(fresh) and "u3" not in fresh and "u4" in fresh


def test_turned_on_later_it_deletes_the_profiles_silent_for_longer_at_the_first_tick():
    """A partition run without expiry, restarted with it: the index rebuilt from every stored profile (the state
    says no expiry ran) lets the first tick delete those long forgotten by the inactivity timer."""
    evs = shop(n_users=5, days=60)
    off = EngineConfig(inactivity_gap_s=10 * DAY, inactivity_rescore_s=5 * DAY, inactivity_rescores=1)
    cut = next(i for i, e in enumerate(evs) if e.ts >= 50 * DAY)
    engine, store, _ = replay(evs[:cut], config=off)
    assert set(store) == {f"u{i}" for i in range(5)} and engine.state.expiry_scanned == 0
    restarted = boot(TTL, store, msgspec.msgpack.encode(engine.snapshot()))
    result = run_to_completion(restarted, records(evs)[cut:])  # deletes result.erased from the store
    assert result.erased == {"u3", "u4"} and set(store) == {"u0", "u1", "u2"} and restarted.counters[("profiles_expired", "clock")] == 2


@pytest.mark.parametrize("ttl, ok", [(0, True), (180 * DAY, False), (180 * DAY + 1, True)])
def test_a_ttl_before_the_last_inactivity_score_is_refused(ttl, ok):
    environ = {"TIDEWATER_PROFILE_TTL_S": str(ttl)}  # defaults: the last score 30 + 5 x 30 = 180 days after
    if ok:
        assert EngineConfig.from_settings(Settings.from_env(environ=environ)).profile_ttl_s == ttl
    else:
        with pytest.raises(InvalidSetting, match="TIDEWATER_PROFILE_TTL_S=1.5552e"):
            Settings.from_env(environ=environ)


def test_the_expiry_counter_reaches_prometheus():
    from streams import metrics

    before = metrics.PROFILES_EXPIRED._value.get()
    metrics.record_engine_metric("profiles_expired", "clock", 3)
    assert metrics.PROFILES_EXPIRED._value.get() == before + 3


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 60), late=st.booleans(), held=st.booleans())
def test_the_scoring_bound_counts_the_expiries_too(batch, late, held):
    """The worker runs a batch on its event loop only when ``scoring_bound`` is small: a tick's expiries (all of a
    store's old profiles at the first tick after expiry is turned on) are work of the same kind and count in it."""
    evs = [Click(event_id=f"q{i}", user_id=f"q{i}", ts=(i % 3) * DAY + i) for i in range(30)]  # silent after
    evs += [Click(event_id=f"b{d}", user_id="busy", ts=d * DAY + 50) for d in range(0, 61, 10)]
    evs.sort(key=lambda e: e.ts)
    if late:  # a late first event, expired at the next tick by the other path
        evs.insert(next(i for i, e in enumerate(evs) if e.ts > 50 * DAY), Click(event_id="l", user_id="x", ts=DAY))
    engine, recs, worked = PartitionEngine(0, TTL, DictStore()), records(evs), 0
    for start in range(0, len(recs) + batch, batch):
        # released at once (the purchases topic, with no record, idle), or all held until the end: one batch then
        # crosses 60 days, each silent user's scores and expiry in it
        now = 0.0 if held else 10.0 * start
        for record in recs[start:start + batch]:
            engine.on_record(record, now)
        bound, expired_before = engine.scoring_bound(), engine.counters[("profiles_expired", "clock")]
        result = engine.on_notify(now if start < len(recs) else 1e18)
        write_back(engine.store, batch_writes(result))
        work = sum(e.topic == "churn-scores" for e in result.outputs)
        work += engine.counters[("profiles_expired", "clock")] - expired_before
        assert work <= bound
        worked += work
    assert engine.counters[("profiles_expired", "clock")] == 30 + late and worked > 0


@pytest.mark.parametrize("tick_hours, gap_days, ttl_days", [(24, 10.5, 10.75), (7, 30, 30 + 1 / 24)])
def test_regression_the_last_inactivity_score_goes_out_when_the_expiry_falls_on_its_tick(tick_hours, gap_days,
                                                                                         ttl_days):
    """A TTL less than one tick above the last inactivity score (the settings accept it) brings both due at one
    tick: the expiry ran first and the silent customer's last score and offer went with the profile (found by
    review). The expiry runs after the tick's scores now."""
    config = EngineConfig(inactivity_gap_s=gap_days * DAY, inactivity_rescores=0, tick_s=tick_hours * 3600.0,
                          profile_ttl_s=ttl_days * DAY)
    evs = [Click(event_id="q", user_id="quiet", ts=DAY + 100, item_id="i1")]
    evs += [Click(event_id=f"b{d}", user_id="busy", ts=d * DAY + 7, item_id="i0") for d in range(0, 40)]
    evs.sort(key=lambda e: e.ts)
    engine, store, result = replay(evs, config=config, batch=5)
    _, _, kept = replay(evs, config=dataclasses.replace(config, profile_ttl_s=0.0), batch=5)
    silent = [s for s in about(result, "quiet") if s.get("trigger") == "inactivity"]
    assert len(silent) == 1 and silent == [s for s in about(kept, "quiet") if s.get("trigger") == "inactivity"]
    assert "quiet" not in store and engine.counters[("profiles_expired", "clock")] == 1


def test_regression_a_late_only_profile_is_expired_after_a_restart_that_adds_an_inactivity_level():
    """A profile of one late event (older than the expiry already done) waits for the next tick's expiry. A
    restart before it with one more re-score configured rebuilt the index with a level never scanned, so the
    profile was indexed under its old day, which the expiry does not scan again: it stayed for good (found by
    review)."""
    busy = [Click(event_id=f"b{d}", user_id="busy", ts=d * DAY + 7 * 3600, item_id="i0") for d in range(60)]
    recs = records(busy[:11] + [Click(event_id="z", user_id="z", ts=DAY, item_id="i1")] + busy[11:])
    before = EngineConfig(inactivity_gap_s=2 * DAY, inactivity_rescore_s=DAY, inactivity_rescores=1,
                          profile_ttl_s=4 * DAY + 1)
    after = dataclasses.replace(before, inactivity_rescores=2, profile_ttl_s=5 * DAY + 1)
    store = EncodedStore()
    engine = PartitionEngine(0, before, store)
    run_to_completion(engine, recs[:12], batch=1)
    assert "z" in store and engine.state.expiry_scanned > 1
    restarted = boot(after, store, msgspec.msgpack.encode(engine.snapshot()))
    run_to_completion(restarted, recs[12:], batch=1)
    assert "z" not in store and restarted.counters[("profiles_expired", "clock")] == 1
