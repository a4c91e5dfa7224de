"""Crashes at any point of the worker's write order, against an uninterrupted run, with the engine alone.

Per batch the worker produces the outputs, writes the changed profiles to the profiles changelog, then the
partition state, then the tombstones of the profiles deleted (erased, expired), then acks the input records. A
crash ends a life either cleanly after a batch, *between* a batch's profile writes and its state (any subset of
those writes landed, no state, no tombstone, nothing acked), or *after the state*: every profile write and the
state landed, any subset of the tombstones, nothing acked. The next life starts from the persisted state, rebuilds
the activity index from every stored profile (where the engine deletes the profiles the state says are deleted)
and re-reads each topic from its committed offset (the first record not acked). Events are late, early, erasures
and clock records; profile expiry is on or off."""
from __future__ import annotations

import dataclasses
import json
from random import Random

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from tidewater.engine import EngineConfig, PartitionEngine, Record
from tidewater.events import Click, Clock, Erase, Purchase, encode_event
from tidewater.profile import DAY

from .test_engine import records
from .test_engine_models import EncodedStore, batch_writes, boot, changelog_writes, redelivered_after, write_back

BASE = EngineConfig(inactivity_gap_s=2 * DAY, inactivity_rescore_s=DAY, inactivity_rescores=1)


def make_events(spec):
    """spec: (days after the previous event, hour, user, kind, days late) per event."""
    out, day = [], 20_000
    for i, (delta, hour, user, kind, late) in enumerate(spec):
        day += delta
        ts = (day - late) * DAY + hour * 3600.0 + i  # distinct times
        if kind == "click":
            out.append(Click(event_id=f"e{i}", user_id=user, ts=ts, item_id=f"i{i % 5}"))
        elif kind == "purchase":
            out.append(Purchase(event_id=f"e{i}", user_id=user, ts=ts, amount=10.0 + i % 7, item_id=f"i{i % 3}"))
        elif kind == "erase":
            out.append(Erase(event_id=f"e{i}", user_id=user, ts=ts))
        else:
            out.append(Clock(ts=ts))
    return out


def run_lives(config, recs, batch, plan):
    """``plan``: per life but the last, (batches it runs, "clean", "between" or "after_state", seed of the landed
    subset). Returns every output produced and the store at the end."""
    store, state, acked, outputs = EncodedStore(), None, set(), []
    for life in range(len(plan) + 1):
        todo = redelivered_after(recs, acked)
        engine = boot(config, store, state)
        last = life == len(plan)
        starts = list(range(0, len(todo), batch)) + ([None] if last else [])  # None: every source idle
        if not last:
            starts = starts[:plan[life][0]]
        for i, start in enumerate(starts):
            if start is not None:
                for record in todo[start:start + batch]:
                    engine.on_record(record, 0.0)
            result = engine.on_notify(1e18 if start is None else 0.0)
            outputs.extend(result.outputs)
            profiles, tombstones = changelog_writes(result)
            crash = plan[life][1] if not last and i == len(starts) - 1 else "clean"
            if crash == "between":  # any subset of the profile writes; no state, no tombstone, nothing acked
                rnd = Random(plan[life][2])
                write_back(store, [w for w in profiles if rnd.random() < 0.5])
                break
            write_back(store, profiles)
            if result.state_changed:
                state = msgspec.msgpack.encode(engine.snapshot())
            if crash == "after_state":  # the state landed, any subset of the tombstones sent after it; no ack
                rnd = Random(plan[life][2])
                write_back(store, [w for w in tombstones if rnd.random() < 0.5])
                break
            write_back(store, tombstones)
            acked |= {(r.topic, r.offset) for r in result.done}
    return outputs, store


def by_id(outputs):
    ids: dict = {}
    for o in outputs:
        ids.setdefault((o.topic, json.loads(o.value).get("event_id")), set()).add(o.value)
    return ids



def crashed_like_uninterrupted(config, spec, batch, plan):
    """Run ``spec`` uninterrupted and with the crashes of ``plan``; both give every output id with the same bytes
    and the same stored profiles. Returns the store (the same in both)."""
    recs = records(make_events(spec))
    reference, reference_store = run_lives(config, recs, batch, [])
    crashed, store = run_lives(config, recs, batch, plan)
    assert by_id(crashed) == by_id(reference) and dict(store) == dict(reference_store)
    return store

events = st.lists(st.tuples(st.sampled_from([0, 0, 0, 1, 1, 2, 5]), st.sampled_from([0, 1, 12, 23]),
                            st.sampled_from(["a", "b", "c", "d"]),
                            st.sampled_from(["click"] * 6 + ["purchase"] * 3 + ["erase", "clock"]),
                            st.sampled_from([0] * 8 + [1, 3, 6, 9])), min_size=1, max_size=45)


@settings(max_examples=2500, deadline=None)  # about 10 s; 1,000 missed two defects only fresh draws found
@given(spec=events, ttl_days=st.sampled_from([0, 4, 6, 8]), batch=st.integers(1, 12), data=st.data())
def test_a_crash_anywhere_in_the_write_order_gives_the_uninterrupted_outputs_and_profiles(spec, ttl_days, batch,
                                                                                          data):
    """Every output id of the uninterrupted run is produced with the same bytes, and no other, and the stored
    profiles are the same bytes. Found by this fuzz: a crash before a partition's first state write scored the
    restored profiles for activity at the first tick, before their events (the check of profiles ahead of the
    state was skipped for a state without marks); and, with expiry, a late event of an expired user re-read after a
    crash went into the user's new profile, which landed without the state (a new profile now starts with the
    partition's offset marks). Once it crashed after the state too (twenty-eighth session): an event dropped by an
    erasure's guard that ended in the same batch, re-read, went into the user's new profile."""
    config = dataclasses.replace(BASE, profile_ttl_s=ttl_days * DAY + 1 if ttl_days else 0.0)
    batches = -(-len(spec) // batch)  # one record per event
    plan = data.draw(st.lists(st.tuples(st.integers(1, batches), st.sampled_from(["clean", "between", "after_state"]),
                                        st.integers(0, 10**6)), min_size=1, max_size=3), label="plan")
    crashed_like_uninterrupted(config, spec, batch, plan)


def _landed_seed(expected: bool) -> int:
    """A seed whose subset of one write lands (True) or not (False)."""
    return next(seed for seed in range(100) if (Random(seed).random() < 0.5) == expected)


def test_regression_a_crash_before_the_first_state_write_scored_restored_profiles_before_their_events():
    """The first batch's profile landed, its state did not: the restarted engine started from an empty state, and
    the check of restored profiles ahead of the state (``_not_scored_before_restore``) was skipped for a state
    without marks, so the user was scored for activity at the first tick, before the events that made them active
    (found by a fuzz of crash points)."""
    spec = [(0, 0, "a", "clock", 1)] + [(0, 0, "a", "click", 0)] * 4 + [(0, 0, "a", "purchase", 0)]
    store = crashed_like_uninterrupted(BASE, spec, 6, [(1, "between", _landed_seed(True))])
    assert "a" in store


def test_regression_a_late_event_re_read_after_a_crash_went_into_the_new_profile_of_an_expired_user():
    """One batch: a late click of an expired-to-be user, the tick that expires them, their return. The new profile
    landed, the state did not; after the restart the late click, new to the restored state and absent from the new
    profile's offsets, was applied into it: the expired history came back (found by a fuzz of crash points after
    the review of profile expiry). A new profile starts with the partition's offset marks now."""
    spec = [(0, 0, "a", "click", 6), (0, 0, "a", "purchase", 0), (0, 0, "a", "click", 0)]
    config = dataclasses.replace(BASE, profile_ttl_s=4 * DAY + 1)
    store = crashed_like_uninterrupted(config, spec, 3, [(1, "between", _landed_seed(True))])
    assert store.get("a").n_events == 2


def test_regression_a_restored_profile_ahead_of_the_state_was_scored_for_silence_at_a_re_fired_tick():
    """The crashed batch held a user's late event and the ticks it crossed; the user's profile landed, the state
    did not. Re-fired, those ticks found the profile indexed by the late event's day and scored the user for
    inactivity, which the uninterrupted run did not: only activity candidates ahead of the state were held back
    (found by review)."""
    spec = [(12, 12, "a", "purchase", 0), (15, 23, "c", "click", 0), (0, 1, "a", "click", 3),
            (18, 12, "b", "purchase", 0)]
    store = crashed_like_uninterrupted(BASE, spec, 2, [(2, "between", _landed_seed(True))])
    assert store.get("a").inactivity_level == 0


@pytest.mark.parametrize("request_late_days", [0, 1])
def test_regression_an_erased_profile_whose_tombstone_did_not_land_after_the_state_is_deleted_at_the_restart(
        request_late_days, caplog):
    """The worker writes a batch's tombstones after its state. A crash in between left the erased profile stored
    while the restored state had the erasure, so the user's return (after the request's time) went into the erased
    profile. The restart deletes it now, told apart by its birth marks from a profile born after the request: a
    request timed before the user's events (a day late here, after them in its topic) erases a profile whose
    events are all later than the request, so the events' times could not tell."""
    spec = [(0, 0, "a", "click", 0), (0, 1, "b", "purchase", 0),  # a's profile stored by the first batch
            (0, 2, "a", "erase", request_late_days), (0, 3, "b", "purchase", 0),  # the crashed batch: a erased
            (0, 4, "a", "click", 0), (0, 5, "b", "purchase", 0)]  # a comes back
    with caplog.at_level("INFO", logger="tidewater.engine"):
        store = crashed_like_uninterrupted(BASE, spec, 2, [(2, "after_state", _landed_seed(False))])
    assert store.get("a").n_events == 1
    # said once, at the restart (not counted again in the erasure metrics: the erasure was, when it ran)
    assert [r.getMessage() for r in caplog.records if "restored state had deleted" in r.getMessage()] == [
        "partition 0: deleted 1 stored profiles that the restored state had deleted (a crash lost their tombstones); "
        "the tombstones go out with this batch"]


def test_regression_a_deletion_carried_out_at_the_restart_waits_for_no_record():
    """The restart deletes a profile whose tombstone a crash lost, and its tombstone goes out with the next batch.
    The worker ran a batch only for records, so on an idle partition the erased user's profile stayed on disk, and
    GET /users/{id}/profile served it, until the partition's next event. ``deletions_waiting`` tells the worker's
    idle pass to run a batch without records (``Pipeline.on_idle``)."""
    recs = records(make_events([(0, 0, "a", "click", 0), (0, 1, "b", "purchase", 0),  # the first batch: stored
                                (0, 2, "a", "erase", 0), (0, 3, "b", "purchase", 0)]))  # the second: a erased
    store = EncodedStore()
    engine = boot(BASE, store, None)
    for batch in (recs[:2], recs[2:]):
        for record in batch:
            engine.on_record(record, 0.0)
        result = engine.on_notify(1e18)
        profiles, tombstones = changelog_writes(result)
        write_back(store, profiles)
    state = msgspec.msgpack.encode(engine.snapshot())  # the second batch's state landed, its tombstone did not
    assert tombstones == [("a", None)] and "a" in store
    restarted = boot(BASE, store, state)
    assert restarted.deletions_waiting() == 1 and restarted.pending() == 0
    assert restarted.on_notify(0.0).erased == {"a"}  # a batch without records writes the tombstone
    assert restarted.deletions_waiting() == 0
    assert boot(BASE, EncodedStore(), None).deletions_waiting() == 0  # nothing to delete: no batch


def test_regression_an_expired_profile_whose_tombstone_did_not_land_after_the_state_is_deleted_at_the_restart():
    """A tick of the crashed batch expired a's profile; the state landed, the tombstone did not. The restart queued
    the profile for the next tick's expiry, as a profile of late events only, and a's return before that tick went
    into it: the expired history came back. A profile born before the last expiry (``expiry_marks``) and older than
    it is deleted at the restart now; one of late events born after it waits for the next tick, as before."""
    config = dataclasses.replace(BASE, profile_ttl_s=4 * DAY + 1)
    spec = [(0, 0, "a", "click", 0), (0, 1, "b", "purchase", 0),  # a's profile stored by the first batch
            (6, 0, "b", "click", 0), (0, 1, "b", "purchase", 0),  # the crashed batch: its last tick expires a
            (0, 2, "a", "click", 0), (0, 3, "b", "purchase", 0)]  # a comes back before the next tick
    store = crashed_like_uninterrupted(config, spec, 2, [(2, "after_state", _landed_seed(False))])
    assert store.get("a").n_events == 1


def test_an_expiry_whose_tombstone_did_not_land_is_still_known_after_the_expiry_is_turned_off():
    """Turned off, the expiry forgets how far it got at the next tick (turned on again, it starts over); not in a
    batch that deletes a profile a restore found expired: its tombstone follows that batch's state, and a crash
    before it would leave a state that could no longer tell the profile apart."""
    on = dataclasses.replace(BASE, profile_ttl_s=4 * DAY + 1)
    spec = [(0, 0, "a", "click", 0), (0, 1, "b", "purchase", 0),  # a's profile stored by the first batch
            (6, 0, "b", "click", 0), (0, 1, "b", "purchase", 0),  # the crashed batch: its last tick expires a
            (2, 0, "b", "click", 0), (0, 1, "b", "purchase", 0)]  # ticks after a restart with the expiry off
    recs = records(make_events(spec))
    store, acked = EncodedStore(), set()

    def run_batches(engine, parts, *, ack: bool) -> bytes:  # a crash after the state of the last: no tombstone
        for part in parts:
            for record in part:
                engine.on_record(record, 0.0)
            result = engine.on_notify(0.0)
            profiles, _ = changelog_writes(result)
            write_back(store, profiles)
            if ack:
                acked.update((r.topic, r.offset) for r in result.done)
        return msgspec.msgpack.encode(engine.snapshot())

    engine = boot(on, store, None)
    run_batches(engine, [recs[:2]], ack=True)
    state = run_batches(engine, [recs[2:4]], ack=False)
    assert "a" in store and engine.state.expiry_scanned
    engine = boot(BASE, store, state)  # restarted with the expiry off
    state = run_batches(engine, [redelivered_after(recs, acked)], ack=False)  # its ticks, then the crash
    assert "a" in store
    assert boot(BASE, store, state).on_notify(0.0).erased == {"a"}


def test_regression_an_erasure_whose_guard_ends_in_its_own_batch_is_still_known_at_the_restart():
    """The crashed batch erased a and crossed the tick that ends the erasure's guard, so the state it wrote no
    longer named a, and the restart could not tell a's profile, left by the lost tombstone, from a new one. The
    request's position is kept past the guard until a later batch, whose state lands only after the tombstone."""
    spec = [(0, 0, "a", "click", 0), (0, 1, "b", "purchase", 0), (0, 5, "b", "purchase", 0),  # a stored
            (0, 2, "a", "erase", 0), (8, 0, "b", "click", 0), (0, 1, "b", "purchase", 0),  # erased, guard ended
            (0, 2, "a", "click", 0), (0, 3, "b", "purchase", 0)]  # a comes back
    store = crashed_like_uninterrupted(BASE, spec, 3, [(2, "after_state", _landed_seed(False))])
    assert store.get("a").n_events == 1


def test_regression_an_event_dropped_by_the_erasure_guard_stays_dropped_when_read_again_after_the_guard():
    """An event of a timed before a's erasure request, read after it, is dropped; the same batch then crossed the
    tick that ends the guard. A crash after the batch's state and before its acks re-read the event: the state's
    offset marks did not cover it (a dropped event did not move them) and the guard was over, so it went into a's
    new profile (found by the fuzz of crash points once it crashed after the state too)."""
    spec = [(0, 0, "a", "click", 0), (0, 0, "a", "erase", 1), (5, 0, "a", "click", 9),  # dropped: before the request
            (2, 0, "b", "purchase", 0),  # its ticks end the guard
            (1, 0, "a", "click", 0)]  # a comes back
    store = crashed_like_uninterrupted(BASE, spec, 5, [(1, "after_state", _landed_seed(True))])
    assert store.get("a").n_events == 1


def _upgrade_scenario(config, life0, upgraded, life1, *, crash_landing: set[str] | None, held: bool = False):
    """A partition whose state is written without offset marks (a state from before them) after ``life0``; the
    upgraded engine runs ``upgraded`` and writes its state (or nothing: empty); then ``life1`` in one batch,
    crashed with only ``crash_landing``'s profile writes landed (None: no crash; ``held``: the batch's last
    records still held in the merge), and the restart from the last state written. Returns the store at the end and the last engine."""
    store = EncodedStore()

    def step(engine, records, land=None, now=1e18):
        for r in records:
            engine.on_record(r, 0.0)
        result = engine.on_notify(now)
        write_back(store, [(user_id, profile) for user_id, profile in batch_writes(result)
                           if land is None or user_id in land])

    first = PartitionEngine(0, config, store)
    step(first, life0)
    for user_id in list(store):  # written before profiles knew their birth marks
        store[user_id] = msgspec.structs.replace(store.get(user_id), born_marks={})
    raw = msgspec.msgpack.encode(msgspec.structs.replace(first.snapshot(), applied=None, seeded={}))
    engine = boot(config, store, raw)
    if upgraded:
        step(engine, upgraded)
        raw = msgspec.msgpack.encode(engine.snapshot())
    if crash_landing is not None:
        step(engine, life1, land=crash_landing, now=0.0 if held else 1e18)
        engine = boot(config, store, raw)  # no state written since
    step(engine, life1)
    return store, engine


def rec(topic, offset, event):
    return Record(topic, 0, offset, event.user_id.encode(), encode_event(event))


def test_regression_an_erasure_re_read_in_the_upgrade_from_a_state_without_marks_was_not_lost():
    """The first version of the birth marks kept them in ``applied``: a restart re-seeded a state without marks
    from them as if a profile held those records, and an erasure request re-read after a crash between the
    batch's profiles and its state was skipped as a duplicate; the erased profile stayed (found by review)."""
    life0 = [rec("clicks", 0, Click(event_id="u1", user_id="u", ts=20_000 * DAY, item_id="i1")),
             rec("clicks", 1, Click(event_id="z1", user_id="z", ts=20_000 * DAY + 60, item_id="i2"))]
    life1 = [rec("purchases", 0, Erase(event_id="x1", user_id="u", ts=20_000 * DAY + 120)),
             rec("clicks", 2, Click(event_id="v1", user_id="v", ts=20_000 * DAY + 180, item_id="i3"))]
    uninterrupted, _ = _upgrade_scenario(EngineConfig(), life0, [], life1, crash_landing=None)
    crashed, engine = _upgrade_scenario(EngineConfig(), life0, [], life1, crash_landing={"v"})
    assert "u" not in uninterrupted and "u" not in crashed
    assert engine.counters[("erased", "purchases")] == 1


def test_regression_birth_marks_past_the_seeded_ones_hold_after_an_upgrade_too():
    """After the upgrade from a state without marks, a source's marks seeded from the stored profiles may cover
    records of users whose profiles never landed, so a new profile does not take them; once a source's marks are
    past the seeded ones, every record below was read, and it does. The first version left every seeded source
    out for good, so the late click of an expired user came back into the new profile there (found by review)."""
    config = dataclasses.replace(BASE, profile_ttl_s=4 * DAY + 1)
    life0 = [rec("clicks", 0, Click(event_id="z1", user_id="z", ts=19_990 * DAY, item_id="i1")),
             rec("purchases", 0, Purchase(event_id="z2", user_id="z", ts=19_990 * DAY + 1, amount=5.0,
                                          item_id="i1"))]
    upgraded = [rec("clicks", 1, Click(event_id="y1", user_id="y", ts=19_993 * DAY, item_id="i2"))]  # past seeded
    life1 = [rec("clicks", 2, Click(event_id="a1", user_id="a", ts=19_994 * DAY, item_id="i3")),  # then silent
             rec("purchases", 1, Purchase(event_id="a2", user_id="a", ts=20_000 * DAY + 1, amount=9.0,
                                          item_id="i3")),  # the tick at day 20,000 expires a; a comes back
             rec("clicks", 3, Click(event_id="a3", user_id="a", ts=20_000 * DAY + 2, item_id="i4"))]  # held
    uninterrupted, _ = _upgrade_scenario(config, life0, upgraded, life1, crash_landing=None)
    crashed, engine = _upgrade_scenario(config, life0, upgraded, life1, crash_landing={"a"}, held=True)
    assert engine.state.seeded and uninterrupted.get("a").n_events == crashed.get("a").n_events == 2
