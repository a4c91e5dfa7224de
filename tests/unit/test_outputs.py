"""tidewater/outputs.py: dead letters (what they carry of a rejected record). Found by mutation testing: the
keyless and tombstone paths, the size boundary and the detail's cut were pinned by no test."""
import base64
import json

from tidewater.engine import EngineConfig, PartitionEngine, Record
from tidewater.events import Rejected
from tidewater.outputs import DEAD_LETTER_MAX_RAW_BYTES, dead_letter

def test_a_record_without_key_or_value_becomes_a_dead_letter_not_a_crash():
    """A tombstone or a keyless record is dead-lettered (key_b64 / value_b64 null, value_size 0): the worker must
    not fail on it (it would read the same record again after every restart)."""
    letter = dead_letter(Rejected("malformed_json", "record has no value (tombstone)"), "clicks", 0, 7, None, None)
    assert (letter.key_b64, letter.value_b64, letter.value_size, letter.key_sha256, letter.value_sha256) == \
        (None, None, 0, None, None)
    engine = PartitionEngine(0, EngineConfig(), {})
    value = json.dumps({"type": "click", "event_id": "e1", "user_id": "ann", "ts": 1_700_000_000}).encode()
    for offset, (key, val) in enumerate([(None, value), (b"ann", None)]):
        engine.on_record(Record("clicks", 0, offset, key, val), 0.0)
    letters = [json.loads(o.value) for o in engine.on_notify(1e18).outputs if o.topic == "dead-letter"]
    assert [(x["reason"], x["key_b64"], x["value_b64"] is None) for x in letters] == \
        [("key_mismatch", None, False), ("malformed_json", base64.b64encode(b"ann").decode(), True)]


def test_a_value_of_exactly_the_carried_limit_is_carried_whole():
    raw = b"x" * DEAD_LETTER_MAX_RAW_BYTES
    letter = dead_letter(Rejected("oversized", "big"), "clicks", 0, 1, b"k", raw)
    assert letter.value_b64 is not None and base64.b64decode(letter.value_b64) == raw and letter.value_sha256 is None
    over = dead_letter(Rejected("oversized", "big"), "clicks", 0, 1, b"k", raw + b"x")
    assert over.value_b64 is None and over.value_sha256 is not None


def test_a_dead_letters_detail_is_cut_to_500_characters():
    letter = dead_letter(Rejected("invalid_field", "d" * 2000), "clicks", 0, 1, b"k", b"{}")
    assert letter.detail == "d" * 500
