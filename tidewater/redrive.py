"""Dead letters back to their input topic once their cause is fixed (`tidewater redrive`): pure, no Kafka.

A dead letter (:class:`tidewater.outputs.DeadLetter`) carries the raw record (its topic, partition, offset, key
and value) and why it was rejected. Once the cause is fixed (a size limit raised, a producer's key corrected, a
decoder that now accepts the form), the letters whose record decodes under the current settings go back to their
original input topic, keyed by the event's ``user_id``: the partitioning contract, so a record rejected for its
key is sent with the right one. The rest are counted under the reason they would get now and left out, so a
redrive never produces dead letters of its own. A record dead-lettered twice (letters are at least once, like
every output) is sent once; the profile's event-id check would skip a second copy anyway.
"""
from __future__ import annotations

import base64
import binascii
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import msgspec

from tidewater.events import Clock, Rejected, decode_event, too_far_ahead
from tidewater.outputs import DeadLetter

_letter = msgspec.json.Decoder(DeadLetter)


@dataclass
class RedrivePlan:
    # (topic, key, value), in event-time order: a user's letters lie on several dead-letter partitions (keyed by
    # the original key: a wrong one for key_mismatch), and a dump reads them partition by partition. Sent in that
    # order, earlier events arrived after later ones, late past the windows' grace (found by review)
    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    # "redriven:<reason it had>", "still_rejected:<reason it would get now>", "skipped:<why>"
    counts: Counter[str] = field(default_factory=Counter)


def plan_redrive(lines: Iterable[bytes], *, input_topics: Mapping[str, str], max_bytes: int,
                 reasons: Iterable[str] | None = None, now: float | None = None,
                 max_lead_s: float = 0.0) -> RedrivePlan:
    """``lines``: dead letters as JSON (what `tidewater record --topic <dead-letter topic>` writes, one per line).
    ``input_topics``: input topic -> the event type it carries. ``reasons``: only letters rejected for these.
    ``now`` and ``max_lead_s``: a record produced at ``now`` whose event is more than ``max_lead_s`` ahead of it
    would be rejected again (ts_in_future), so it stays out."""
    wanted = set(reasons) if reasons else None
    plan = RedrivePlan()
    timed: list[tuple[float, str, int, int, tuple[str, bytes, bytes]]] = []
    seen: set[tuple[str, int, int]] = set()
    for line in lines:
        if not line.strip():
            continue
        try:
            letter = _letter.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            plan.counts["skipped:not_a_dead_letter"] += 1
            continue
        if wanted is not None and letter.reason not in wanted:
            plan.counts["skipped:reason_not_selected"] += 1
            continue
        if letter.topic not in input_topics:
            plan.counts["skipped:not_an_input_topic"] += 1
            continue
        origin = (letter.topic, letter.partition, letter.offset)
        if origin in seen:
            plan.counts["skipped:duplicate_letter"] += 1
            continue
        seen.add(origin)
        if letter.value_sha256 is not None:  # the record was too large for its letter to carry it
            plan.counts["skipped:value_not_kept"] += 1
            continue
        try:
            value = None if letter.value_b64 is None else base64.b64decode(letter.value_b64, validate=True)
        except (binascii.Error, ValueError):
            plan.counts["skipped:bad_base64"] += 1
            continue
        event = decode_event(value, max_bytes=max_bytes, expected_type=input_topics[letter.topic])
        if isinstance(event, Rejected):
            plan.counts[f"still_rejected:{event.reason}"] += 1
            continue
        if isinstance(event, Clock):  # a partition's clock, not a user's event: `tidewater clock` writes a new one
            plan.counts["skipped:clock"] += 1
            continue
        if now is not None and too_far_ahead(event.ts, now, max_lead_s):
            plan.counts["still_rejected:ts_in_future"] += 1
            continue
        assert value is not None  # decode_event rejects a missing value
        timed.append((event.ts, *origin, (letter.topic, event.user_id.encode(), value)))
        plan.counts[f"redriven:{letter.reason}"] += 1
    timed.sort(key=lambda t: t[:4])  # by event time, then where it was read first: one order for any dump
    plan.records = [t[4] for t in timed]
    return plan
