"""tidewater/redrive.py: which dead letters go back to their input topic, with which key and bytes."""
from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tidewater.engine import EngineConfig, PartitionEngine, Record
from tidewater.redrive import plan_redrive

TOPICS = {"clicks": "click", "purchases": "purchase"}


def dead_letter_emits(records: list[Record], max_bytes: int) -> list:
    """What the engine writes to the dead-letter topic (key and value) after it saw ``records``."""
    engine = PartitionEngine(0, EngineConfig(max_event_bytes=max_bytes), {})
    for record in records:
        engine.on_record(record, 0.0)
    return [emit for emit in engine.on_notify(1e18).outputs if emit.topic == "dead-letter"]


def dead_letters(records: list[Record], max_bytes: int) -> list[bytes]:
    """The dead-letter topic's values after the engine saw ``records`` (the letters a worker writes)."""
    return [emit.value for emit in dead_letter_emits(records, max_bytes)]


def click(user: str, i: int, **extra) -> bytes:
    return json.dumps({"type": "click", "event_id": f"{user}-{i}", "user_id": user, "ts": 1_700_000_000 + i,
                       **extra}).encode()


def test_fixed_causes_go_back_with_the_users_key_and_the_rest_stay_out():
    big = click("ann", 1, category="c" * 200)  # over a 150-byte limit, fine under 1024
    wrong_key = click("bob", 2)
    records = [Record("clicks", 0, 10, b"ann", big), Record("clicks", 0, 11, b"not-bob", wrong_key),
               Record("clicks", 0, 12, b"cy", b"{not json"), Record("purchases", 0, 5, b"dee", click("dee", 3))]
    letters = dead_letters(records, max_bytes=150)
    assert sorted(json.loads(x)["reason"] for x in letters) == ["key_mismatch", "malformed_json", "oversized",
                                                                 "wrong_topic"]
    plan = plan_redrive(letters, input_topics=TOPICS, max_bytes=1024)
    assert plan.records == [("clicks", b"ann", big), ("clicks", b"bob", wrong_key)]
    assert plan.counts == {"redriven:oversized": 1, "redriven:key_mismatch": 1,
                           "still_rejected:malformed_json": 1, "still_rejected:wrong_topic": 1}
    # nothing fixed yet: the same limit leaves the oversized record out too
    assert plan_redrive(letters, input_topics=TOPICS, max_bytes=150).records == [("clicks", b"bob", wrong_key)]


def test_regression_a_record_too_large_for_its_letter_is_named_by_digest_not_carried():
    """A dead letter carried the whole record in base64, 4/3 its size: an 800 KB record (under Kafka's 1 MB
    default) made a letter that Kafka refuses, which stops the worker, which reads the record again after every
    restart (found by review). Now a value or key over 256 KiB is left out, named by its SHA-256 and its head."""
    import base64
    import hashlib

    from tidewater.outputs import DEAD_LETTER_HEAD_BYTES, DEAD_LETTER_MAX_RAW_BYTES

    huge = click("ann", 1, blob="x" * 800_000)
    huge_key = b"k" * (DEAD_LETTER_MAX_RAW_BYTES + 1)
    records = [Record("clicks", 0, 10, b"ann", huge), Record("clicks", 0, 11, huge_key, click("bob", 2)),
               Record("clicks", 0, 12, b"cy", click("cy", 3, blob="y" * (DEAD_LETTER_MAX_RAW_BYTES - 200)))]
    emitted = dead_letter_emits(records, max_bytes=16384)
    letters = [emit.value for emit in emitted]
    # the largest carries a 256 KiB value (4/3 of it in base64); the huge key is not the letter's key either
    assert max(len(emit.key) + len(emit.value) for emit in emitted) < 400_000
    assert [emit.key for emit in emitted] == [b"ann", hashlib.sha256(huge_key).hexdigest().encode(), b"cy"]
    big, keyed, kept = (json.loads(x) for x in letters)
    assert big["reason"] == "oversized" and big["value_b64"] is None and big["value_size"] == len(huge)
    assert big["value_sha256"] == hashlib.sha256(huge).hexdigest()
    assert base64.b64decode(big["value_head_b64"]) == huge[:DEAD_LETTER_HEAD_BYTES]
    assert keyed["reason"] == "key_mismatch" and keyed["key_b64"] is None
    assert keyed["key_sha256"] == hashlib.sha256(huge_key).hexdigest() and keyed["value_b64"]
    assert base64.b64decode(kept["value_b64"]) == records[2].value and kept["value_sha256"] is None
    # raising the limit cannot bring back what the letter does not hold: counted, not sent
    plan = plan_redrive(letters, input_topics=TOPICS, max_bytes=1 << 20)
    assert plan.records == [("clicks", b"bob", click("bob", 2)), ("clicks", b"cy", records[2].value)]
    assert plan.counts["skipped:value_not_kept"] == 1


def test_an_event_from_the_future_goes_back_only_once_its_time_is_near():
    early = click("ann", 0)  # ts 1_700_000_000, produced two days before it
    letters = dead_letters([Record("clicks", 0, 1, b"ann", early, timestamp=(1_700_000_000 - 2 * 86400) * 1000)],
                           max_bytes=1024)
    assert [json.loads(x)["reason"] for x in letters] == ["ts_in_future"]
    still = plan_redrive(letters, input_topics=TOPICS, max_bytes=1024, now=1_700_000_000 - 2 * 86400,
                         max_lead_s=86400)
    assert still.records == [] and still.counts == {"still_rejected:ts_in_future": 1}
    later = plan_redrive(letters, input_topics=TOPICS, max_bytes=1024, now=1_700_000_000 - 3600, max_lead_s=86400)
    assert later.records == [("clicks", b"ann", early)]
    # a clock record from the future is not sent back: `tidewater clock` writes a current one
    clock = json.dumps({"type": "clock", "ts": 1_700_000_000}).encode()
    letters = dead_letters([Record("clicks", 0, 2, b"any", clock, timestamp=(1_700_000_000 - 2 * 86400) * 1000)],
                           max_bytes=1024)
    assert [json.loads(x)["reason"] for x in letters] == ["ts_in_future"]
    assert plan_redrive(letters, input_topics=TOPICS, max_bytes=1024).counts == {"skipped:clock": 1}


def test_reason_filter_foreign_topics_duplicates_and_lines_that_are_not_letters():
    letters = dead_letters([Record("clicks", 0, 1, b"x", click("ann", 1)), Record("clicks", 0, 2, b"bob", b"[")],
                           max_bytes=4096)  # ann's key is wrong: key_mismatch; bob's value: malformed_json
    foreign = json.loads(letters[0]) | {"topic": "orders"}
    lines = letters + [letters[0], json.dumps(foreign).encode(), b"", b"hello", b'{"reason": "x"}']
    plan = plan_redrive(lines, input_topics=TOPICS, max_bytes=4096, reasons=["key_mismatch"])
    assert plan.records == [("clicks", b"ann", click("ann", 1))]
    assert plan.counts == {"redriven:key_mismatch": 1, "skipped:reason_not_selected": 1,
                           "skipped:duplicate_letter": 1, "skipped:not_an_input_topic": 1,
                           "skipped:not_a_dead_letter": 2}


# valid ids have no control characters and no lone surrogates (not Unicode text: msgspec refuses the escape)
ID_CHARACTERS = st.characters(blacklist_categories=("Cc", "Cs"))
events = st.builds(
    lambda kind, user, i, amount, item: json.dumps(
        {"type": kind, "event_id": f"e{i}", "user_id": user, "ts": 1_600_000_000 + i,
         **({"amount": amount} if kind == "purchase" else {}), **({"item_id": item} if item else {})}).encode(),
    st.sampled_from(["click", "purchase"]), st.text(ID_CHARACTERS, min_size=1, max_size=20), st.integers(0, 10**6),
    st.floats(0, 1e6, allow_nan=False), st.one_of(st.none(), st.text(ID_CHARACTERS, min_size=1, max_size=12)))


@settings(max_examples=100, deadline=None)
@given(st.lists(events, min_size=1, max_size=8))
def test_any_valid_event_rejected_for_its_key_comes_back_byte_for_byte(values):
    topics = {"click": "clicks", "purchase": "purchases"}
    records = [Record(topics[json.loads(v)["type"]], 0, n, b"\xff-wrong-key", v) for n, v in enumerate(values)]
    plan = plan_redrive(dead_letters(records, max_bytes=16384), input_topics=TOPICS, max_bytes=16384)
    in_time = sorted(records, key=lambda r: (json.loads(r.value)["ts"], r.topic, r.partition, r.offset))
    assert plan.records == [(r.topic, json.loads(r.value)["user_id"].encode(), r.value) for r in in_time]
    assert plan.counts == {"redriven:key_mismatch": len(values)}


def test_a_dead_letter_dump_is_not_taken_for_record_envelopes():
    """A dead letter has topic, partition, offset and value_b64 like a `record --with-meta` envelope; replaying a
    dump of the dead-letter topic must not put the rejected records back (only `redrive` does, filtered)."""
    from streams.replay import envelope, from_envelope

    letters = dead_letters([Record("clicks", 0, 1, b"cy", b"{not json")], max_bytes=1024)
    assert letters and from_envelope(letters[0]) is None
    line = json.dumps(envelope("clicks", 0, 1, b"cy", b"\xff")).encode()
    assert from_envelope(line) == ("clicks", 0, b"cy", b"\xff", None, None)


def test_regression_a_users_letters_go_back_in_event_time_order_whatever_the_dump_order():
    """Letters are keyed by the original key (a wrong one for key_mismatch: here a session id), so one user's lie on
    several dead-letter partitions, and `tidewater record` dumps partition by partition. Sent in dump order, the
    user's earlier events came after later ones, late past the windows' grace (found by review)."""
    first, second, third = (Record("clicks", 0, 20 + i, f"session-{i}".encode(), click("eve", i)) for i in range(3))
    letters = [dead_letters([r], max_bytes=1024)[0] for r in (third, first, second)]  # the dump's order
    plan = plan_redrive(letters, input_topics=TOPICS, max_bytes=1024)
    assert [json.loads(value)["event_id"] for _, _, value in plan.records] == ["eve-0", "eve-1", "eve-2"]
    assert {key for _, key, _ in plan.records} == {b"eve"}


# --- found by mutation testing (twenty-sixth session): behaviours no test pinned

def _letter(value: bytes, **changes) -> bytes:
    letter = json.loads(dead_letters([Record("clicks", 0, 1, b"wrong", value)], max_bytes=4096)[0])
    return json.dumps(letter | changes).encode()


def test_a_letter_whose_value_is_not_valid_base64_is_skipped_and_counted_once():
    good = _letter(click("bob", 2))
    bad = _letter(click("ann", 1), offset=2, value_b64="not base64!")
    plan = plan_redrive([bad, good], input_topics=TOPICS, max_bytes=4096)
    assert plan.records == [("clicks", b"bob", click("bob", 2))]
    assert plan.counts == {"skipped:bad_base64": 1, "redriven:key_mismatch": 1}


def test_a_letter_without_its_value_is_counted_as_value_not_kept_only():
    """A letter of a record too large to carry (value_sha256 set, value_b64 null) is counted once, under
    value_not_kept, not also as a still-rejected record without a value."""
    kept_out = _letter(click("ann", 1), value_b64=None, value_sha256="0" * 64,
                       value_head_b64=base64.b64encode(b"{").decode())
    plan = plan_redrive([kept_out], input_topics=TOPICS, max_bytes=4096)
    assert plan.records == [] and plan.counts == {"skipped:value_not_kept": 1}


def test_an_event_exactly_max_lead_ahead_of_now_goes_back_as_the_engine_accepts_it():
    """The engine rejects ts_in_future only when the event is *more* than max_lead_s after the record's time;
    redrive keeps the same boundary."""
    letter = _letter(click("ann", 0))  # ts 1_700_000_000
    plan = plan_redrive([letter], input_topics=TOPICS, max_bytes=4096, now=1_700_000_000 - 100, max_lead_s=100)
    assert plan.records == [("clicks", b"ann", click("ann", 0))]
    later = plan_redrive([letter], input_topics=TOPICS, max_bytes=4096, now=1_700_000_000 - 101, max_lead_s=100)
    assert later.records == [] and later.counts == {"still_rejected:ts_in_future": 1}


def test_regression_redrive_takes_a_with_meta_dump_and_refuses_an_unknown_reason(tmp_path):
    """A dump made with `record --with-meta` (each letter inside an envelope) was skipped whole as
    "not_a_dead_letter", and `--reason oversize` (a typo) selected nothing and said "0 records would be sent back"
    (found by review)."""
    import asyncio

    import pytest

    from streams.replay import envelope, redrive
    from tidewater.errors import UserError
    from tidewater.settings import Settings

    big = click("ann", 1, category="c" * 200)
    emits = dead_letter_emits([Record("clicks", 0, 10, b"ann", big)], max_bytes=150)
    plain, meta = tmp_path / "plain.jsonl", tmp_path / "meta.jsonl"
    plain.write_bytes(b"\n".join(emit.value for emit in emits) + b"\n")
    meta.write_bytes(b"\n".join(json.dumps(envelope("dead-letter", 0, n, emit.key, emit.value, 1, 1)).encode()
                                for n, emit in enumerate(emits)) + b"\n")
    s = Settings(bootstrap_servers="127.0.0.1:1")  # a dry run: nothing is sent
    for dump in (plain, meta):
        plan = asyncio.run(redrive(s, str(dump), dry_run=True))
        assert plan.counts == {"redriven:oversized": 1} and plan.records == [("clicks", b"ann", big)]
    with pytest.raises(UserError, match="unknown --reason oversize: the reasons are oversized, malformed_json"):
        asyncio.run(redrive(s, str(plain), reasons=["oversize"], dry_run=True))
