"""The pure partition engine, driven like a Bytewax testing source → sink, with no broker."""
import dataclasses
import json
from random import Random

import msgspec
import pytest
from hypothesis import example, given, settings, strategies as st

from tidewater.engine import EngineConfig, PartitionEngine, Record, run_to_completion
from tidewater.events import Click, Purchase, encode_event
from tidewater.profile import DAY, encode_profile


class DictStore(dict):
    def get(self, key):
        return dict.get(self, key)


def records(events, partition=0):
    offsets = {"clicks": 0, "purchases": 0}
    out = []
    for e in events:
        topic = "purchases" if isinstance(e, Purchase) else "clicks"
        if isinstance(e, bytes):
            topic = "clicks"
        value = e if isinstance(e, bytes) else encode_event(e)
        key = b"u1" if isinstance(e, bytes) else getattr(e, "user_id", "clock").encode()
        out.append(Record(topic, partition, offsets[topic], key, value))
        offsets[topic] += 1
    return out


def shop(n_users=6, days=90):
    events = []
    for u in range(n_users):
        for d in range(0, days, 3 + u):  # user u comes every 3+u days, then stops at day `days - 10*u`
            if d > days - 10 * u:
                break
            ts = d * DAY + 3600 * u
            events.append(Click(event_id=f"c{u}-{d}", user_id=f"u{u}", ts=ts, item_id=f"i{(u + d) % 7}"))
            if d % 2 == 0:
                events.append(Purchase(event_id=f"p{u}-{d}", user_id=f"u{u}", ts=ts + 60, amount=20.0 + u,
                                       item_id=f"i{d % 5}"))
    return sorted(events, key=lambda e: e.ts)


def run(recs, batch=50, config=EngineConfig(inactivity_gap_s=14 * DAY)):
    store = DictStore()
    engine = PartitionEngine(0, config, store)
    result = run_to_completion(engine, recs, batch=batch)
    store.update(result.profiles)
    return engine, store, result


def test_profiles_are_exact_and_every_record_is_done():
    evs = shop()
    engine, store, result = run(records(evs))
    assert len(result.done) == len(evs)
    for user in {e.user_id for e in evs}:
        mine = [e for e in evs if e.user_id == user]
        assert store[user].n_events == len(mine)
        assert store[user].n_purchases == sum(isinstance(e, Purchase) for e in mine)


SHOP_RECORDS = records(shop())
_, _, SHOP_REFERENCE = run(SHOP_RECORDS, batch=7)


@settings(max_examples=40, deadline=None)
@example(batch=1, arrival="time", rnd=Random(0))
@example(batch=1000, arrival="clicks first", rnd=Random(0))
@example(batch=13, arrival="purchases first", rnd=Random(0))
@given(batch=st.integers(1, 120), arrival=st.sampled_from(["time", "clicks first", "purchases first", "random"]),
       rnd=st.randoms(use_true_random=False))
def test_outputs_do_not_depend_on_batch_boundaries_or_topic_interleaving(batch, arrival, rnd):
    """Any arrival order that keeps each topic's own offset order is something Kafka could deliver: the outputs
    are those of one fixed run, byte for byte (it was three fixed orders; the README says any interleaving)."""
    clicks = [r for r in SHOP_RECORDS if r.topic == "clicks"]
    purchases = [r for r in SHOP_RECORDS if r.topic == "purchases"]
    if arrival == "time":
        order = SHOP_RECORDS
    elif arrival == "clicks first":
        order = clicks + purchases
    elif arrival == "purchases first":
        order = purchases + clicks
    else:  # a random interleaving of the two topics
        picks = [0] * len(clicks) + [1] * len(purchases)
        rnd.shuffle(picks)
        queues = [iter(clicks), iter(purchases)]
        order = [next(queues[p]) for p in picks]
    _, _, result = run(order, batch=batch)
    assert [o.value for o in result.outputs] == [o.value for o in SHOP_REFERENCE.outputs]


def test_inactive_users_are_scored_and_get_offers():
    from tidewater.offers import OfferPolicy

    config = EngineConfig(inactivity_gap_s=14 * DAY, offers=OfferPolicy(churn_threshold=0.2))
    _, _, result = run(records(shop()), config=config)
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "churn-scores"]
    inactive = {s["user_id"] for s in scores if s["trigger"] == "inactivity"}
    assert {"u4", "u5"} <= inactive  # they stop coming 40 and 50 days before the end
    assert "u0" not in inactive  # u0 comes every 3 days until the end
    offers = [json.loads(o.value) for o in result.outputs if o.topic == "retention-offers"]
    assert offers and all("high_churn_risk" in o["reason_codes"] for o in offers)
    assert all(o["model_version"] == "heuristic:recency-v1" for o in offers)
    ids = [s["event_id"] for s in scores]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("offer_items", [0, 2])
def test_regression_offer_items_zero_attached_every_popular_item(offer_items):
    """``TIDEWATER_OFFER_ITEMS=0`` is allowed, and the popularity ranking added an item before it compared the
    row's length with k, so 0 meant no limit: up to 500 items per offer (found by review)."""
    from tidewater.offers import OfferPolicy

    config = EngineConfig(inactivity_gap_s=14 * DAY, offers=OfferPolicy(churn_threshold=0.2), offer_items=offer_items)
    _, _, result = run(records(shop()), config=config)
    offers = [json.loads(o.value) for o in result.outputs if o.topic == "retention-offers"]
    assert offers
    # at most k: fewer where the partition's popular items are all seen by the user (the README says so)
    assert max(len(o["items"]) for o in offers) == offer_items
    # with none asked for, no recommender chose them: none is named
    assert {o["recs_model_version"] is None for o in offers} == {offer_items == 0}


def test_regression_a_customer_silent_for_the_gap_gets_long_inactivity_when_a_late_event_triggers_the_score():
    """A late event (timed weeks ago) makes its user active at the next tick, and the score's trigger is then
    ``activity``: the offer said only ``high_churn_risk`` for a customer silent for 45 days (found by review).
    ``long_inactivity`` now means silent for at least the inactivity gap, whatever triggered the score, as the
    offline offer check already decided it."""
    from tidewater.offers import OfferPolicy

    class RisingWithTheLateClick:  # low on the purchase alone (the silence timer's score), high with the click
        version = "test:two-events"

        def score_many(self, sequences, as_of):
            return [0.95 if len(s) > 1 else 0.1 for s in sequences]

    config = EngineConfig(inactivity_gap_s=30 * DAY, offers=OfferPolicy(churn_threshold=0.5))
    evs = [Purchase(event_id="p", user_id="u1", ts=0.5 * DAY, amount=80.0)]
    evs += [Click(event_id=f"c{d}", user_id="u2", ts=d * DAY + 60, item_id="i") for d in range(46)]
    evs += [Click(event_id="late", user_id="u1", ts=1 * DAY, item_id="i")]  # arrives on day 45
    evs += [Click(event_id=f"c{d}", user_id="u2", ts=d * DAY + 60, item_id="i") for d in range(46, 48)]
    engine = PartitionEngine(0, config, DictStore(), scorer=RisingWithTheLateClick())
    result = run_to_completion(engine, records(evs))
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "churn-scores" and o.key == b"u1"]
    offers = [json.loads(o.value) for o in result.outputs if o.topic == "retention-offers"]
    assert [s["trigger"] for s in scores if s["score"] > 0.5] == ["activity"]  # the output keeps what triggered it
    assert len(offers) == 1 and offers[0]["user_id"] == "u1"
    assert offers[0]["reason_codes"] == ["high_churn_risk", "long_inactivity"]


def test_recommendations_exclude_seen_items_and_follow_cadence():
    evs = shop()
    _, store, result = run(records(evs))
    recs = [json.loads(o.value) for o in result.outputs if o.topic == "recommendations"]
    assert recs
    for rec in recs:
        assert rec["model_version"] == "baseline:popularity-v1"
        assert len(rec["items"]) <= 10
    per_user = {u: sum(1 for e in evs if e.user_id == u) for u in store}
    assert len(recs) <= sum(n // EngineConfig().rec_every_events for n in per_user.values())
    for rec in recs:
        seen = {e.item_id for e in evs if e.user_id == rec["user_id"] and e.ts <= rec["as_of"] and e.item_id}
        assert not seen & {i["item_id"] for i in rec["items"]}


def test_redelivery_after_crash_applies_nothing_twice():
    recs = records(shop())
    engine, store, first = run(recs)
    # a restarted worker gets the last 40 records again, with the persisted state
    before = {u: encode_profile(p) for u, p in store.items()}  # bytes: the engine changes the store's objects
    restarted = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), store, state=engine.snapshot())
    again = run_to_completion(restarted, recs[-40:])
    assert again.outputs == []
    assert restarted.counters[("duplicates_skipped", "clicks")] + restarted.counters[("duplicates_skipped", "purchases")] == 40
    assert again.profiles and {u: encode_profile(p) for u, p in again.profiles.items()} == \
        {u: before[u] for u in again.profiles}


@pytest.mark.parametrize("reread", [1, 7, 40])
def test_regression_a_reread_moved_the_states_offset_mark_back_and_counted_items_twice(reread):
    """A restart re-reads the records after the last commit, which the state already holds (it is written before
    the ack, and Faust commits about once a second). The first re-read record set the state's offset mark back to
    its own offset, so every later one looked new to the state while its profile had it: the engine took that for
    a crash between the profiles and the state, and counted its item again. The popularity ranking, and the
    recommendations and offers that fall back on it, then differed from an uninterrupted run (found by review)."""
    recs = records(shop())
    cut = 2 * len(recs) // 3
    uninterrupted, _, whole = run(recs)
    engine, store, first = run(recs[:cut])
    restarted = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), store, state=engine.snapshot())
    for profile in list(store.values()):
        restarted.index_profile(profile)  # as the worker rebuilds its activity index from the stored profiles
    again = run_to_completion(restarted, recs[cut - reread:])
    assert restarted.state.item_counts == uninterrupted.state.item_counts
    assert restarted.state.applied == uninterrupted.state.applied
    assert [o.value for o in first.outputs + again.outputs] == [o.value for o in whole.outputs]


def test_regression_an_erasure_reread_after_its_guard_expired_deleted_the_profile_built_since():
    """The duplicate check of an erasure request expired with its guard (TIDEWATER_ERASURE_GUARD_S of event time),
    but how far a restart re-reads depends on the last commit (wall-clock time): in a backlog, days of event time
    pass in a second. Re-read after its guard, the request deleted the profile the user had built since and
    confirmed the erasure a second time (found by review). A re-read request is now known by the state's offset
    marks, which never expire."""
    from tidewater.events import Erase

    evs = shop(days=60)
    at = next(i for i, e in enumerate(evs) if e.ts > 20 * DAY)
    evs.insert(at, Erase(event_id="forget-u0", user_id="u0", ts=evs[at - 1].ts))
    recs = records(evs)
    erase_at = next(i for i, r in enumerate(recs) if b"forget-u0" in r.value)
    cut = next(i for i, e in enumerate(evs) if e.ts > 35 * DAY)  # the guard (7 days) has expired by then
    _, whole_store, whole = run(recs)
    engine, store, first = run(recs[:cut])
    assert not engine.state.erased  # expired: the old check had nothing left to know the request by
    restarted = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), store, state=engine.snapshot())
    for profile in list(store.values()):
        restarted.index_profile(profile)
    again = run_to_completion(restarted, recs[erase_at:])  # the last commit was before the request
    store.update(again.profiles)
    assert [o.value for o in first.outputs + again.outputs] == [o.value for o in whole.outputs]
    assert encode_profile(store["u0"]) == encode_profile(whole_store["u0"])


def test_regression_a_state_from_before_the_offset_marks_gets_them_and_stops_growing_erase_records():
    """A partition state written before the offset marks (``applied`` None) kept None for good after an upgrade:
    the crash fix behind the marks never ran there, and every later erasure went into erase_records inside the one
    state record, past Kafka's 1 MiB after ~20,000 erasures within the guard (found by review). Upgraded, its
    marks start at the stored profiles' offsets; a re-read request known by erase_records is still a duplicate,
    and erase_records empties as the marks cover it."""
    from tidewater.events import Erase

    evs = shop(days=60)
    for user, day in (("u0", 30), ("u1", 45)):  # u0 forgotten before the restart, u1 after it
        at = next(i for i, e in enumerate(evs) if e.ts > day * DAY)
        evs.insert(at, Erase(event_id=f"forget-{user}", user_id=user, ts=evs[at - 1].ts))
    recs = records(evs)
    erase_u0 = next(i for i, r in enumerate(recs) if b"forget-u0" in r.value)
    cut = erase_u0 + 12
    uninterrupted, _, whole = run(recs)
    engine, store, first = run(recs[:cut])
    class Written(dict):  # which users ever went into erase_records
        added: set = set()

        def __setitem__(self, user, value):
            self.added.add(user)
            super().__setitem__(user, value)

    erase_records = Written({"u0": ("clicks/0", recs[erase_u0].offset)})
    legacy = msgspec.structs.replace(engine.snapshot(), applied=None,  # as a state of before the marks
                                     erase_records=erase_records)
    restarted = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), store, state=legacy)
    for profile in list(store.values()):
        restarted.index_profile(profile)
    again = run_to_completion(restarted, recs[erase_u0 - 3:])  # the last commit was before u0's request
    assert [o.value for o in first.outputs + again.outputs] == [o.value for o in whole.outputs]
    assert restarted.state.item_counts == uninterrupted.state.item_counts
    assert restarted.state.applied == uninterrupted.state.applied  # it got the marks
    assert "u1" not in Written.added  # u1's request is known by the marks
    assert restarted.state.erase_records == {}  # and u0's entry went once they covered it


@pytest.mark.parametrize("case", ["retried_on_the_other_topic", "guard_expired"])
def test_regression_an_upgraded_state_counts_re_read_items_once_around_an_erasure(case):
    """Review of the upgrade: an erasure re-read after the restart marked its source at once, and every re-read
    record after it then looked new to the state and counted its item again. A second request of the user on the
    other topic (erase_records keeps one per user), or a request whose guard had expired, did it. The marks now
    start from the stored profiles' offsets, which a state from before them holds."""
    from tidewater.events import Erase

    config = EngineConfig(inactivity_gap_s=14 * DAY, erasure_guard_s=DAY if case == "guard_expired" else 7 * DAY)
    evs = shop(days=60)
    at = next(i for i, e in enumerate(evs) if e.ts > 30 * DAY)
    request = Erase(event_id="forget-u0", user_id="u0", ts=evs[at - 1].ts)
    evs[at:at] = [request, request] if case == "retried_on_the_other_topic" else [request]
    recs, offsets, seen = [], {"clicks": 0, "purchases": 0}, 0
    for r in records(evs):  # a retried request goes to purchases: requests come on either input topic
        seen += b"forget-u0" in r.value
        topic = "purchases" if b"forget-u0" in r.value and seen == 2 else r.topic
        recs.append(Record(topic, 0, offsets[topic], r.key, r.value))
        offsets[topic] += 1
    first_request = next(i for i, r in enumerate(recs) if b"forget-u0" in r.value)
    last_request = max(i for i, r in enumerate(recs) if b"forget-u0" in r.value)
    cut = last_request + 40  # a day of events later: the short guard has expired
    uninterrupted, _, whole = run(recs, config=config)
    engine, store, first = run(recs[:cut], config=config)
    kept = {} if case == "guard_expired" else {"u0": (f"{recs[last_request].topic}/0", recs[last_request].offset)}
    if case == "guard_expired":
        assert not engine.state.erased  # nothing left in the state to know the request by
    legacy = msgspec.structs.replace(engine.snapshot(), applied=None, erase_records=kept)
    restarted = PartitionEngine(0, config, store, state=legacy)
    for profile in list(store.values()):
        restarted.index_profile(profile)
    again = run_to_completion(restarted, recs[first_request - 3:])
    assert restarted.state.item_counts == uninterrupted.state.item_counts
    assert [o.value for o in first.outputs + again.outputs] == [o.value for o in whole.outputs]


def test_regression_an_upgraded_state_keeps_the_crash_fix_at_later_restores():
    """The marks of a state from before them were seeded from the stored profiles at every restore (a flag kept the
    state "upgraded"): after a crash that stored a batch's profiles and not its state, the seeding raised the marks to the
    profiles ahead, and the re-read events' items were not counted (the case the marks are for; found reading the
    change). The seeding is for the first life of such a state only."""
    recs = records(shop())
    cut, crash = len(recs) // 3, 2 * len(recs) // 3
    uninterrupted, _, _ = run(recs)
    engine, store, _ = run(recs[:cut])
    legacy = msgspec.structs.replace(engine.snapshot(), applied=None)
    config = EngineConfig(inactivity_gap_s=14 * DAY)
    upgraded = PartitionEngine(0, config, store, state=legacy)
    for profile in list(store.values()):
        upgraded.index_profile(profile)
    run_to_completion(upgraded, recs[cut:crash])
    raw = msgspec.msgpack.encode(upgraded.snapshot())  # the state record written with the marks

    def written():
        return msgspec.msgpack.decode(raw, type=type(legacy))

    assert written().applied  # written with the marks
    ahead = PartitionEngine(0, config, store, state=written())
    run_to_completion(ahead, recs[crash:crash + 40])  # its profiles reach the store, its state does not (a crash)
    restarted = PartitionEngine(0, config, store, state=written())
    for profile in list(store.values()):
        restarted.index_profile(profile)
    run_to_completion(restarted, recs[crash:])
    assert restarted.state.item_counts == uninterrupted.state.item_counts


def test_regression_an_offline_run_does_not_keep_every_changed_item_and_erasure():
    """run_to_completion never took what the worker takes after each batch (the items and erasures changed since
    the last write), so a long offline replay held every item ever counted and every user ever erased (found by a
    soak: 16,612 items and 3,773 erasures after two years of event time)."""
    from tidewater.events import Erase

    evs = shop(days=60)
    evs.insert(len(evs) // 2, Erase(event_id="forget-u1", user_id="u1", ts=evs[len(evs) // 2].ts))
    engine, _, _ = run(records(evs))
    assert engine.state.item_counts  # items were counted, and the erasure applied
    assert (engine._changed_items, engine._changed_erasures, engine._ranking_changed) == (set(), set(), False)


@pytest.mark.parametrize("broken", ["fold", "query", "refresh", "mark_recommended", "change_since_rec"])
def test_regression_a_recommender_hook_that_raises_does_not_stop_the_stream(broken):
    """Scoring and the batched recommendation query fell back on failure, but the per-profile hooks did not: one
    that raised stopped the worker, on the same record again at every restart (found by review). The popularity
    placeholder's hook answers instead, and scoring_errors counts it."""
    from tidewater.offers import OfferPolicy
    from tidewater.recommending import PartitionPopularity

    class Broken(PartitionPopularity):
        version = "test:broken"
        has_vectors = True  # so that change_since_rec is asked too

    def fail(*_):
        raise RuntimeError("a model bug")

    setattr(Broken, broken, fail)
    config = EngineConfig(inactivity_gap_s=14 * DAY, offers=OfferPolicy(churn_threshold=0.2))
    recs = records(shop())
    engine = PartitionEngine(0, config, DictStore(), recommender=Broken())
    result = run_to_completion(engine, recs)
    assert len(result.done) == len(recs)
    assert engine.counters[("scoring_errors", "test:broken")] > 0
    _, _, reference = run(recs, config=config)  # the placeholder throughout: the same outputs but the versions
    assert len(result.outputs) == len(reference.outputs)


def test_bad_records_go_to_dead_letter_and_valid_ones_around_them_apply():
    good = [Click(event_id=f"e{i}", user_id="u1", ts=float(i)) for i in range(4)]
    bad = [b"{oops", json.dumps({"type": "refund", "event_id": "x", "user_id": "u1", "ts": 1}).encode(),
           json.dumps({"type": "click", "user_id": "u1", "ts": 1}).encode(),
           json.dumps({"type": "click", "event_id": "x", "user_id": "u1", "ts": "now"}).encode(),
           json.dumps({"type": "click", "event_id": "x", "user_id": "u1", "ts": 1, "category": "z" * 200}).encode()]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4], good[3]]
    config = EngineConfig(max_event_bytes=150)
    store = DictStore()
    result = run_to_completion(PartitionEngine(0, config, store), records(mixed))
    letters = [json.loads(o.value) for o in result.outputs if o.topic == "dead-letter"]
    assert [l["reason"] for l in letters] == ["malformed_json", "unknown_event_type", "missing_field",
                                              "invalid_field", "oversized"]
    assert all(l["value_b64"] and l["topic"] == "clicks" for l in letters)
    assert result.profiles["u1"].n_events == 4
    assert len(result.done) == len(mixed)


def test_regression_a_dead_letter_is_acked_after_the_records_of_its_source_held_before_it():
    """A dead letter was acked at once, while a valid record read before it from the same topic partition was
    still held in the event-time merge. Faust commits past a gap of one record at the head of its acked offsets
    (and past any gap while nothing was committed yet), so a crash or a revocation then skipped the held record
    for good (found by review). Acks of one source now keep its offset order."""
    engine = PartitionEngine(0, EngineConfig(), DictStore())
    click = records([Click(event_id="c1", user_id="u1", ts=10.0)])[0]
    bad = dataclasses.replace(click, offset=click.offset + 1, value=b"{not json")
    engine.on_record(click, now=0.0)
    engine.on_record(bad, now=0.0)  # the purchases source says nothing yet: the click is held
    held = engine.on_notify(now=0.0)
    assert [o.topic for o in held.outputs] == ["dead-letter"] and held.done == []  # reported, not acked yet
    released = engine.on_notify(now=0.0, caught_up=frozenset({"purchases"}))
    assert [(r.topic, r.offset) for r in released.done] == [("clicks", click.offset), ("clicks", bad.offset)]
    # with nothing held before it, a dead letter is acked at once
    later = dataclasses.replace(click, offset=click.offset + 2, value=b"{not json either")
    engine.on_record(later, now=0.0)
    assert [r.offset for r in engine.on_notify(now=0.0).done] == [later.offset]


def test_regression_dead_letters_held_behind_a_record_count_towards_the_held_bound():
    """Dead letters read after a held record wait to be acked after it, but pending() counted only the merge, so
    the worker's bound on held records never saw them: one held click and a stream of bad records grew without
    bound, raw values and all (found by review)."""
    engine = PartitionEngine(0, EngineConfig(), DictStore())
    click = records([Click(event_id="c1", user_id="u1", ts=10.0)])[0]
    engine.on_record(click, now=0.0)
    for i in range(1, 51):
        engine.on_record(dataclasses.replace(click, offset=click.offset + i, value=b"{bad"), now=0.0)
    engine.on_notify(now=0.0)  # purchases says nothing: the click stays held, the letters behind it
    assert engine.pending() == 51
    released = engine.on_notify(now=0.0, caught_up=frozenset({"purchases"}))
    assert len(released.done) == 51 and engine.pending() == 0
    engine.on_record(dataclasses.replace(click, offset=100), now=0.0)
    engine.on_record(dataclasses.replace(click, offset=101, value=b"{bad"), now=0.0)
    engine.on_notify(now=0.0)
    assert engine.pending() == 2
    engine.drop_pending()  # a revocation: neither is acked, the next owner re-reads both
    assert engine.pending() == 0


def _produced_at(recs, lag_s: float = 60.0):
    """The records as a producer writes them: Kafka timestamps (ms) shortly after each event's time."""
    return [dataclasses.replace(r, timestamp=int((json.loads(r.value)["ts"] + lag_s) * 1000)) for r in recs]


def test_regression_one_event_from_a_wrong_clock_does_not_move_the_partitions_event_time():
    """An event dated 2099 moved the partition's watermark there: thousands of inactivity ticks at once, then
    every later event was late and no tick fired again (found by review). An event further ahead of its record's
    Kafka timestamp than max_event_lead_s is dead-lettered; everything else is as without it."""
    evs = shop()
    clean = _produced_at(records(evs))
    bogus = Click(event_id="wrong-clock", user_id="u1", ts=4070908800.0)  # 2099-01-01
    mixed = _produced_at(records(evs[:40] + [bogus] + evs[40:]))
    mixed[40] = dataclasses.replace(mixed[40], timestamp=mixed[39].timestamp)  # produced when its neighbours were
    _, _, reference = run(clean)
    _, _, result = run(mixed)
    letters = [json.loads(o.value) for o in result.outputs if o.topic == "dead-letter"]
    assert [(l["reason"], l["offset"]) for l in letters] == [("ts_in_future", mixed[40].offset)]
    assert "TIDEWATER_MAX_EVENT_LEAD_S" in letters[0]["detail"]
    assert len(result.done) == len(mixed)
    outputs = [(o.topic, o.value) for o in result.outputs if o.topic != "dead-letter"]
    assert outputs == [(o.topic, o.value) for o in reference.outputs]
    # within the lead, or without Kafka timestamps (the pure engine's callers), events are taken as they are
    near = dataclasses.replace(clean[-1], offset=10**6, timestamp=clean[-1].timestamp - 3600 * 1000)
    _, _, result = run(clean + [near])
    assert not [o for o in result.outputs if o.topic == "dead-letter"]
    _, _, result = run(records(evs[:40] + [bogus]))
    assert not [o for o in result.outputs if o.topic == "dead-letter"]
    # -1: a record without a timestamp (old message format upconverted by the broker) is not checked either
    _, _, result = run([dataclasses.replace(r, timestamp=-1) for r in clean])
    assert not [o for o in result.outputs if o.topic == "dead-letter"]


def test_a_failing_scorer_falls_back_to_the_placeholder_and_the_stream_goes_on():
    class Broken:
        version = "model:broken"

        def score_many(self, sequences, as_of):
            raise RuntimeError("bad weights")

    from streams import metrics

    def exported() -> float:
        value = metrics.REGISTRY.get_sample_value("tidewater_scoring_errors_total", {"model_version": "model:broken"})
        return value or 0.0

    before = exported()
    store = DictStore()
    engine = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), store, scorer=Broken(),
                             metrics=metrics.record_engine_metric)
    evs = shop()
    result = run_to_completion(engine, records(evs))
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "churn-scores"]
    assert scores and {s["model_version"] for s in scores} == {"heuristic:recency-v1"}
    failures = engine.counters[("scoring_errors", "model:broken")]
    assert failures > 0
    assert len(result.done) == len(evs)
    engine.drain_metrics()
    assert exported() - before == failures  # on /metrics, for the alert rule


@pytest.mark.parametrize("bad", [3.7, -0.2])
def test_regression_a_model_that_returns_logits_is_a_scoring_failure_not_an_offer(bad):
    """Only NaN and infinity were failures: a model answering logits (3.7) gave every user a "probability" above 1,
    an offer and high_churn_risk, until the budget ran out (found by review)."""

    class Logits:
        version = "model:logits"

        def score_many(self, sequences, as_of):
            return [bad] * len(sequences)

    engine = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), DictStore(), scorer=Logits())
    result = run_to_completion(engine, records(shop()))
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "churn-scores"]
    assert scores and all(s["model_version"] == "heuristic:recency-v1" and 0 <= s["score"] <= 1 for s in scores)
    assert engine.counters[("scoring_errors", "model:logits")] > 0


@pytest.mark.parametrize("scores_off, expected_off", [(-1, 0), (1, 0), (0, -1)])
def test_regression_a_model_that_answers_too_few_or_too_many_is_a_scoring_failure(scores_off, expected_off):
    """Only the values were checked, not how many: a model answering one score short stopped the engine with an
    IndexError, and one answering an extra score was taken as it was (found by review)."""

    class Miscounts:
        version = "model:miscounts"

        def predict_many(self, sequences, as_of):
            return [0.5] * (len(sequences) + scores_off), [1.0] * (len(sequences) + expected_off)

    engine = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), DictStore(), scorer=Miscounts())
    evs = shop()
    result = run_to_completion(engine, records(evs))
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "churn-scores"]
    assert scores and {s["model_version"] for s in scores} == {"heuristic:recency-v1"}
    assert engine.counters[("scoring_errors", "model:miscounts")] > 0
    assert len(result.done) == len(evs)


def test_regression_a_model_that_returns_nan_is_a_scoring_failure_not_an_offer():
    """NaN is not below the offer threshold, so a model returning NaN made every scored user an offer with a null
    score (found by review): such a tick is scored by the placeholder, and counted as a failure."""
    import math

    from tidewater.offers import decide
    from tidewater.profile import new_profile

    class Nan:
        version = "model:nan"

        def score_many(self, sequences, as_of):
            return [math.nan] * len(sequences)

    engine = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY), DictStore(), scorer=Nan())
    result = run_to_completion(engine, records(shop()))
    scores = [json.loads(o.value) for o in result.outputs if o.topic == "churn-scores"]
    assert scores and all(s["model_version"] == "heuristic:recency-v1" and s["score"] is not None for s in scores)
    assert engine.counters[("scoring_errors", "model:nan")] > 0
    buyer = new_profile("u")
    buyer.n_purchases, buyer.monetary = 5, 500.0
    assert decide(buyer, math.nan, 100 * DAY, "inactivity", 0) is None
    assert decide(buyer, 0.99, 100 * DAY, "inactivity", 0) is not None  # the same customer, a real score


class BrokenRecommender:
    """Loads, then fails on every query (an index of the wrong dimension, say)."""

    version = "recs:broken"
    index_version = "idx:broken"
    has_vectors = False
    partition_independent = True

    def fold(self, profile, item_id):
        return False

    def refresh(self, profile):
        pass

    def query(self, profile):
        from tidewater.recommending import PartitionPopularity

        return PartitionPopularity().query(profile)

    def change_since_rec(self, profile):
        return 0.0

    def mark_recommended(self, profile):
        pass

    def recommend_many(self, queries, k, popular, popular_counts):
        raise ValueError("query dimension 32 != index dimension 64")


@pytest.mark.parametrize("together", [False, True], ids=["one_engine", "answered_together"])
def test_regression_a_failing_recommender_falls_back_to_popularity_and_the_stream_goes_on(together):
    """A recommender that failed at query time raised out of the batch and stopped the worker, again at every
    restart (churn scoring already fell back to its placeholder; found by review)."""
    from tidewater.engine import answer_recs_together

    config = EngineConfig(inactivity_gap_s=14 * DAY, rec_every_events=2)
    reference_engine = PartitionEngine(0, config, DictStore())
    reference = run_to_completion(reference_engine, records(shop()))
    engine = PartitionEngine(0, config, DictStore(), recommender=BrokenRecommender())
    if together:  # the worker's path: queued queries of several engines answered in one call
        for record in records(shop()):
            engine.on_record(record, 1e18)
        result = engine.on_notify(1e18, defer_recs=True)
        answer_recs_together([engine], [result])
    else:
        result = run_to_completion(engine, records(shop()))
    recs = [json.loads(o.value) for o in result.outputs if o.topic == "recommendations"]
    expected = [json.loads(o.value) for o in reference.outputs if o.topic == "recommendations"]
    assert recs == expected  # the popularity placeholder's answers, with its versions on them
    assert {(r["model_version"], r["index_version"]) for r in recs} == {("baseline:popularity-v1", "none")}
    assert engine.counters[("scoring_errors", "recs:broken")] > 0


@settings(max_examples=25, deadline=None)
@given(n_users=st.integers(1, 8), days=st.integers(5, 120), batch=st.integers(1, 60))
def test_scoring_bound_is_an_upper_bound_and_zero_only_without_scoring(n_users, days, batch):
    """The worker runs a batch on its event loop only when ``scoring_bound`` is small: it must never
    under-count the churn scores that the next ``on_notify`` emits."""
    engine = PartitionEngine(0, EngineConfig(inactivity_gap_s=14 * DAY, inactivity_rescore_s=7 * DAY), DictStore())
    recs = records([msgspec.structs.replace(e, ts=e.ts + 1000 * DAY) for e in shop(n_users, days)])
    scored_total = 0
    for start in range(0, len(recs) + batch, batch):
        for record in recs[start:start + batch]:
            engine.on_record(record, 0.0)
        now = 0.0 if start < len(recs) else 1e18  # the last round releases everything, as at the end of a replay
        bound = engine.scoring_bound()
        result = engine.on_notify(now)
        engine.store.update(result.profiles)
        scored = sum(e.topic == "churn-scores" for e in result.outputs)
        assert scored <= bound
        scored_total += scored
    assert scored_total > 0


def test_scoring_bound_is_zero_while_no_tick_can_be_crossed():
    engine = PartitionEngine(0, EngineConfig(), DictStore())
    day = 1000 * DAY
    first = [Click(event_id="a", user_id="u1", ts=day + 60, item_id="i1"),
             Purchase(event_id="b", user_id="u1", ts=day + 120, amount=5.0, item_id="i1")]
    for record in records(first):
        engine.on_record(record, 0.0)
    assert engine.scoring_bound() == 0  # the first tick is the next midnight
    engine.on_notify(1e18)
    later = records([Click(event_id="c", user_id="u2", ts=day + 3600, item_id="i2")])
    engine.on_record(Record("clicks", 0, 1, later[0].key, later[0].value), 1e18)
    assert engine.scoring_bound() == 0
    engine.on_notify(1e18)
    engine.on_record(Record("clicks", 0, 2, b"u1", encode_event(
        Click(event_id="d", user_id="u1", ts=day + DAY, item_id="i2"))), 1e18)
    assert engine.scoring_bound() >= 2  # midnight is crossed: both active users may be scored
    result = engine.on_notify(1e18)
    assert sum(e.topic == "churn-scores" for e in result.outputs) == 2


def test_regression_late_events_are_counted_on_metrics():
    """tidewater_late_events_total was declared and documented but never incremented (found by review)."""
    from streams import metrics

    def exported() -> float:
        return metrics.REGISTRY.get_sample_value("tidewater_late_events_total", {"topic": "clicks"}) or 0.0

    before = exported()
    evs = [Click(event_id="a", user_id="u1", ts=10 * DAY), Click(event_id="b", user_id="u2", ts=10 * DAY + 60),
           Click(event_id="late", user_id="u1", ts=2 * DAY)]  # eight days behind the watermark: beyond the grace
    engine = PartitionEngine(0, EngineConfig(), DictStore(), metrics=metrics.record_engine_metric)
    result = run_to_completion(engine, records(evs))
    assert result.profiles["u1"].late_events == 1 and result.profiles["u1"].n_events == 2  # applied, not windowed
    assert engine.counters[("late_events", "clicks")] == 1
    engine.drain_metrics()
    assert exported() - before == 1


def test_clock_records_score_the_silent_users_of_a_partition_without_traffic():
    """A partition's timers run on its own records' time: once its users all stop, no tick fires and no one is
    scored for inactivity. Clock records (``tidewater clock``, ``replay --close``) move its time instead; they touch
    no profile, and one before the watermark changes nothing."""
    from tidewater.events import Clock

    quiet = [Click(event_id=f"q{i}", user_id=f"q{i}", ts=i * 3600.0) for i in range(3)]
    config = EngineConfig(inactivity_gap_s=30 * DAY, inactivity_rescore_s=30 * DAY, inactivity_rescores=1)

    def scores(evs):
        _, store, result = run(records(evs), config=config)
        return store, [(json.loads(o.value)["user_id"], json.loads(o.value)["as_of"], json.loads(o.value)["trigger"])
                       for o in result.outputs if o.topic == "churn-scores"]

    _, without = scores(quiet)
    assert without == []  # the day's activity waits for a tick that never comes
    clocks = [Clock(ts=t * DAY) for t in (0.5, 31.0, 61.0, 200.0)]  # the first one is before the watermark
    store, with_clocks = scores(quiet + [Clock(ts=0.5 * 3600.0)] + clocks)
    assert with_clocks == [(f"q{i}", DAY, "activity") for i in range(3)] + \
        [(f"q{i}", 31 * DAY, "inactivity") for i in range(3)] + [(f"q{i}", 61 * DAY, "inactivity") for i in range(3)]
    assert set(store) == {"q0", "q1", "q2"} and all(p.n_events == 1 for p in store.values())


def test_a_clock_record_is_accepted_on_any_input_topic_with_any_key():
    from tidewater.events import Clock, decode_event

    raw = json.dumps({"type": "clock", "ts": "2026-11-30T00:00:00Z"}).encode()
    for topic_type, key in (("click", b"anything"), ("purchase", None)):
        event = decode_event(raw, max_bytes=1024, expected_type=topic_type, key=key, keyed=True)
        assert event == Clock(ts=1795996800.0)
    assert decode_event(b'{"type": "clock"}', max_bytes=1024).reason == "missing_field"


def test_regression_the_outputs_interleave_alike_whatever_the_batching():
    """A tick's churn scores and offers went out before the recommendations of earlier events when nothing
    flushed those first (a rerank, a batch's end): one record per batch put the recommendation first, one batch
    after (found by a fuzz of batch sizes; each topic's records were the same). The tick answers the queued
    recommendations first now, so the whole output, across topics, is in event-time order for any batching."""
    day = 1_700_697_600.0  # a midnight: the daily tick falls between the second and the third event
    # u0's purchase ranks i2 popular at once; u1's click (no item) queues a recommendation of it; nothing after it
    # counts an item, so the tick finds no ranking to redo (which sends the queue out first)
    events = [Purchase(event_id="p0", user_id="u0", ts=day + 500.0, amount=16.0, item_id="i2"),
              Click(event_id="c1", user_id="u1", ts=day + 1_000.0),
              Purchase(event_id="p2", user_id="u2", ts=day + 2_000.0, amount=8.0),
              Click(event_id="c3", user_id="u3", ts=day + 86_400.0 + 1_000.0),
              Purchase(event_id="p4", user_id="u4", ts=day + 86_400.0 + 2_000.0, amount=8.0)]  # releases c3
    config = EngineConfig(inactivity_gap_s=14 * DAY, rec_every_events=1)  # a recommendation at every event
    runs = [[(o.topic, o.key, o.value) for o in run(records(events), batch=batch, config=config)[2].outputs]
            for batch in (1, 2, 5)]
    topics = [topic for topic, _, _ in runs[0]]
    assert "churn-scores" in topics and "recommendations" in topics  # the case: a tick between recommendations
    assert runs[0] == runs[1] == runs[2], [[t for t, _, _ in r] for r in runs]


def test_regression_a_reread_after_the_erasure_guard_did_not_bring_an_erased_profile_back():
    """An erasure, then its guard expired (days of event time pass in a second of backlog), then a crash before the
    commit: the re-read click found no profile and no guard, and built the erased user's profile again from data
    they asked to be forgotten (found by a fuzz of crashes and restores). The state's offset marks say the click was
    processed before; a record they cover that the profile does not hold is skipped."""
    from tidewater.events import Clock, Erase

    recs = records([Click(event_id="c1", user_id="u1", ts=1_000.0, item_id="i1"),
                    Erase(event_id="e1", user_id="u1", ts=2_000.0),
                    Clock(ts=2_000.0 + 3 * DAY)])
    config = EngineConfig(inactivity_gap_s=14 * DAY, erasure_guard_s=DAY)
    engine, store, first = run(recs, config=config)
    assert first.erased == {"u1"} and not engine.state.erased  # deleted, and the guard has expired
    store.pop("u1", None)
    restarted = PartitionEngine(0, config, store, state=engine.snapshot())
    again = run_to_completion(restarted, recs)  # the last commit was before all of them
    assert "u1" not in again.profiles and "u1" not in store
    assert not [o for o in again.outputs if o.topic != "user-erasures"]  # nothing rebuilt from the erased click


def test_regression_marks_seeded_from_the_profiles_do_not_skip_records_in_a_later_life():
    """A state from before the offset marks gets them from the stored profiles, so they may cover records of users
    whose profiles never landed. The skip of re-read records that no profile holds was turned off only in the engine
    that seeded them: after a restart (a crash, or a rebalance of a rolling upgrade) the seeded marks were plain
    marks, and those users' records were skipped for good (found by review). The seeded marks are kept apart."""
    import msgspec

    from tidewater.engine import PartitionState
    from tidewater.profile import apply, new_profile

    config = EngineConfig(inactivity_gap_s=14 * DAY)
    evs = [Click(event_id=f"w{i}", user_id="w", ts=1000.0 + i, item_id="i1") for i in range(3)]
    evs += [Click(event_id="v", user_id="v", ts=1003.0, item_id="i2"),
            Click(event_id="x", user_id="x", ts=1004.0, item_id="i3"),
            Click(event_id="u", user_id="u", ts=1005.0, item_id="i4")]
    recs = records(evs)
    store = DictStore()  # a worker from before the marks stored u's profile (offset 5) and not the others'
    store["u"] = new_profile("u")
    apply(store["u"], evs[5], "clicks/0", 5, 0.0, config.profile)

    def boot(state):
        engine = PartitionEngine(0, config, store, state=state)
        for profile in list(store.values()):
            engine.index_profile(profile)  # as the worker's restore does
        return engine

    first = boot(PartitionState(partition=0, applied=None))
    store.update(run_to_completion(first, recs[:3], batch=3).profiles)
    persisted = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()), type=PartitionState)
    assert persisted.applied == {"clicks/0": 5} and persisted.seeded == {"clicks/0": 5}
    second = boot(persisted)  # restarted, committed through offset 2
    again = run_to_completion(second, recs[3:], batch=3)
    assert {"v", "x"} <= set(again.profiles) and again.profiles["v"].n_events == 1


def test_regression_marks_are_seeded_from_the_restored_profiles_only():
    """The seeding of a state without marks went on for profiles processed after the restore, so the seeded marks
    (exempt from the skip of re-read records no profile holds) covered them: a click processed in that first life,
    then erased, was applied again by a re-read after the guard expired (found by review)."""
    import msgspec

    from tidewater.engine import PartitionState
    from tidewater.events import Clock, Erase
    from tidewater.profile import apply, new_profile

    config = EngineConfig(inactivity_gap_s=14 * DAY, erasure_guard_s=DAY)
    evs = [Click(event_id="w", user_id="w", ts=1_000.0, item_id="i0"),  # stored by a worker from before the marks
           Click(event_id="c1", user_id="e", ts=1_001.0, item_id="i1"),
           Erase(event_id="x1", user_id="e", ts=2_000.0),
           Clock(ts=2_000.0 + 3 * DAY)]  # the guard expires
    recs = records(evs)
    store = DictStore()
    store["w"] = new_profile("w")
    apply(store["w"], evs[0], "clicks/0", 0, 0.0, config.profile)

    def boot(state):
        engine = PartitionEngine(0, config, store, state=state)
        for profile in list(store.values()):
            engine.index_profile(profile)
        return engine

    first = boot(PartitionState(partition=0, applied=None))
    result = run_to_completion(first, recs[1:], batch=10)
    assert result.erased == {"e"}
    persisted = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()), type=PartitionState)
    assert persisted.seeded == {"clicks/0": 0}  # the stored profile's offset, not the processed ones'
    again = run_to_completion(boot(persisted), recs[1:], batch=10)  # a crash before the commit: all re-read
    assert "e" not in again.profiles
