"""Input event schemas (the contract with the web tier) and decoding with reasons.

Events are JSON objects tagged by ``type``. Validation happens at the edge: a record that fails to decode or
validate never reaches the profile logic; it becomes a :class:`Rejected` with a short machine-readable
``reason`` and a human-readable ``detail`` (the dead-letter topic carries both).
"""
from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Literal, Union

import msgspec
import numpy as np

SCHEMA_VERSION = 1
MAX_TS = 4102444800.0  # 2100-01-01: anything later is a unit mistake (ms instead of s)

# Ids of clicks and purchases have no control characters (C0, DEL, C1): an id goes into log lines, URLs
# (/users/{id}/profile) and the outputs, where a newline in one forged a log line (found by a security review).
# Checked after decoding (``_control_character_in_ids``; msgspec's pattern check cost 2 µs per event), published in
# the schema as a look-ahead that means the same in Python and in JSON Schema (ECMA-262): ^[^...]+$ would not,
# since Python's $ also matches before a final newline. An erasure takes any id: a profile stored under an id
# with a tab before the check must stay erasable (found by review).
_CONTROL_CLASS = r"[\x00-\x1f\x7f-\x9f]"
_NO_CONTROL_CHARACTERS = rf"^(?![\s\S]*{_CONTROL_CLASS})"
_CONTROL_CHARACTER = re.compile(_CONTROL_CLASS)
AnyId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, description="1 to 128 characters, no control characters",
                                 extra_json_schema={"pattern": _NO_CONTROL_CHARACTERS})]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_TS, description="event time, UNIX epoch seconds (UTC)")]
# Event time as epoch seconds, or as an RFC 3339 date-time with its UTC offset ("2026-11-30T12:00:00Z"), which
# decode_event turns into epoch seconds: every decoded event carries a float ``ts``.
Ts = Union[EpochSeconds, Annotated[datetime, msgspec.Meta(
    tz=True, description="event time, RFC 3339 with offset, from 1970-01-01 to 2100-01-01 (no leap second :60)")]]
Money = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
Text = Annotated[str, msgspec.Meta(max_length=256)]


class Click(msgspec.Struct, tag="click", tag_field="type", kw_only=True, frozen=True):
    """A product view or click. ``type`` is "click"."""

    event_id: Id
    user_id: Id
    ts: Ts
    schema_version: Literal[1] = 1
    item_id: Id | None = None
    category: Text | None = None
    price: Money | None = None


class Purchase(msgspec.Struct, tag="purchase", tag_field="type", kw_only=True, frozen=True):
    """A completed purchase line. ``type`` is "purchase"; ``amount`` is the line total."""

    event_id: Id
    user_id: Id
    ts: Ts
    amount: Money
    schema_version: Literal[1] = 1
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000,
                                          description="a JSON integer literal: 2, not 2.0 (a dead letter)")] = 1
    item_id: Id | None = None
    category: Text | None = None


class Erase(msgspec.Struct, tag="erase", tag_field="type", kw_only=True, frozen=True):
    """A request to forget a user (the right to erasure). ``type`` is "erase". Sent on either input topic, keyed
    by the user: the worker deletes the user's profile (a tombstone in the changelog, so a restore does not bring
    it back), drops the user from its inactivity timers and confirms on the erasures topic; recommendations
    already queued by earlier events are still answered. Events of the user timed at or before the request that
    arrive after it are dropped for a guard period (TIDEWATER_ERASURE_GUARD_S); events timed after it start a new
    profile."""

    event_id: AnyId
    user_id: AnyId
    ts: Ts
    schema_version: Literal[1] = 1


class Clock(msgspec.Struct, tag="clock", tag_field="type", kw_only=True, frozen=True):
    """Event time has reached ``ts`` in this partition: no user's event, only the partition's clock. ``type`` is
    "clock". Written to every partition of an input topic (`tidewater clock`, `tidewater replay --close`, or the
    web tier's POST /events, which sends it to all partitions), with any key. A partition's timers run on its own
    events' time, so one that gets no more events (its users all quiet, or the end of a replay) would score no
    one for inactivity without it. A clock record is part of the input: a replay gives the same outputs. One
    timed before the partition's watermark changes nothing."""

    ts: Ts
    schema_version: Literal[1] = 1


Event = Union[Click, Purchase]
InputEvent = Union[Click, Purchase, Erase, Clock]  # what the input topics carry
EVENT_TYPES = ("click", "purchase", "erase", "clock")

_decoder = msgspec.json.Decoder(InputEvent)

# Events are flat. msgspec's depth limit is Python's recursion limit (1,000) less the caller's stack, so a record
# nested some 900 levels deep was accepted by a shallow caller (`redrive`, the engine's executor thread) and refused
# by a deep one (the engine on the event loop, inside asyncio and Faust). A fixed limit, checked first, gives every
# caller the same answer: within it, msgspec's verdict does not depend on the stack (any caller under 500 frames).
# Only a record longer than twice the limit can be nested that deep: the usual small event pays nothing more.
MAX_NESTING = 500
_NESTING_CHECKED_ABOVE = 2 * MAX_NESTING  # bytes: a shorter record cannot be nested deeper than the limit
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def _nested_too_deeply(raw: bytes) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False
    outside_strings = _JSON_STRING.sub(b"", raw)  # a bracket inside a string does not nest
    steps = _DEPTH_STEP[np.frombuffer(outside_strings, np.uint8)]
    return bool(steps.size) and int(np.cumsum(steps, dtype=np.int64).max()) > MAX_NESTING


_encoder = msgspec.json.Encoder()


class Rejected(msgspec.Struct, frozen=True):
    reason: str  # one of REJECT_REASONS
    detail: str


REJECT_REASONS = ("oversized", "malformed_json", "unknown_event_type", "missing_field", "invalid_field",
                  "wrong_topic", "key_mismatch", "ts_in_future")  # the last one: the engine's, against the record


def decode_event(raw: bytes | None, *, max_bytes: int, expected_type: str | None = None,
                 key: bytes | None = None, keyed: bool = False) -> InputEvent | Rejected:
    """Decode and validate one record value. Never raises on bad input. ``expected_type``: the event type of the
    topic it came from (an erasure is accepted on any input topic). ``key``: the record's key, which must be the
    user_id; ``keyed``: the value came from a Kafka record, so a missing key is an error too (the producer's
    partitioner would scatter the user over partitions: split profiles, a cooldown and budget per piece)."""
    if raw is None:
        return Rejected("malformed_json", "record has no value (tombstone)")
    size = len(raw)
    if size > max_bytes:
        return Rejected("oversized", f"{size} bytes > limit {max_bytes}")
    if size > _NESTING_CHECKED_ABOVE and _nested_too_deeply(raw):
        return Rejected("malformed_json", f"JSON nested more than {MAX_NESTING} levels deep")
    try:
        event = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _classify(str(exc))
    except msgspec.DecodeError as exc:
        return Rejected("malformed_json", _decode_error_detail(str(exc), raw))
    except RecursionError:  # a few kB of brackets, well within max_bytes
        return Rejected("malformed_json", "JSON nested too deeply")
    if isinstance(event.ts, datetime):
        ts = event.ts.timestamp()
        if not 0.0 <= ts <= MAX_TS:
            return Rejected("invalid_field", f"ts {event.ts.isoformat()} is outside 1970..2100 - at `$.ts`")
        event = msgspec.structs.replace(event, ts=ts)
    if not math.isfinite(event.ts):  # pragma: no cover - JSON has no NaN/inf literals; belt and braces
        return Rejected("invalid_field", "ts is not finite")
    if isinstance(event, Clock):
        return event  # any topic, any key: it belongs to the partition, not to a user
    if not isinstance(event, Erase):
        bad = _control_character_in_ids(event)
        if bad:
            return Rejected("invalid_field", f"control characters are not allowed in an id - at `$.{bad}`")
    if expected_type is not None and not isinstance(event, Erase) and event_type(event) != expected_type:
        return Rejected("wrong_topic", f"a {event_type(event)} event on the {expected_type} topic")
    if key is None and keyed:
        return Rejected("key_mismatch", "record has no key: the key must be the user_id (partitioning is by user)")
    if key is not None and key != event.user_id.encode():
        return Rejected("key_mismatch", "record key must be the user_id (partitioning is by user)")
    return event


def too_far_ahead(ts: float, produced_at: float, max_lead_s: float) -> bool:
    """An event time more than ``max_lead_s`` after the time its record was (or will be) produced: the workers
    dead-letter it as ts_in_future. 0 turns the check off (TIDEWATER_MAX_EVENT_LEAD_S)."""
    return bool(max_lead_s) and ts > produced_at + max_lead_s


def _control_character_in_ids(event: Event) -> str | None:
    """The first id field holding a control character, or None. ``str.isprintable`` first: True rules control
    characters out at a tenth of a regex search's cost (it is False for more than them: spaces other than ' ',
    format characters)."""
    for name in ("event_id", "user_id", "item_id"):
        value = getattr(event, name)
        if value is not None and not value.isprintable() and _CONTROL_CHARACTER.search(value):
            return name
    return None


# an escape (not an escaped backslash before "u") of a high surrogate followed neither by a low surrogate's escape
# nor by the end of the input within the start of one (a record cut there is only truncated)
_LONE_HIGH_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}"
                                  rb"(?!\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\?(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]{0,2})?)?)?\Z)")


def _decode_error_detail(message: str, raw: bytes) -> str:
    """msgspec says "Input data was truncated" for an escaped high surrogate with no low one after it, when the
    string is the document's last (`{"user_id": "\\ud800"}`): say what is wrong instead (such a text is not
    Unicode: it cannot be a Kafka key or be written as UTF-8)."""
    if message == "Input data was truncated" and _LONE_HIGH_SURROGATE.search(raw):
        return "JSON is malformed: unpaired utf-16 surrogate escape (not a Unicode text)"
    return message


def _classify(message: str) -> Rejected:
    if "Object missing required field" in message:
        if "`type`" in message:
            return Rejected("unknown_event_type", message)
        return Rejected("missing_field", message)
    if "Invalid value" in message and "`$.type`" in message:
        return Rejected("unknown_event_type", message)
    return Rejected("invalid_field", message)


def event_type(event: InputEvent) -> str:
    if isinstance(event, Purchase):
        return "purchase"
    if isinstance(event, Clock):
        return "clock"
    return "erase" if isinstance(event, Erase) else "click"


def encode_event(event: InputEvent) -> bytes:
    return _encoder.encode(event)


def json_schema() -> dict:
    return msgspec.json.schema(InputEvent)
