"""Output event schemas: the public contract with the downstream offer engine.

Every output carries ``schema`` (name/version), a deterministic ``event_id`` derived from its inputs (an
idempotency key: re-deliveries after a crash produce the same id), the event time it refers to (``as_of``)
and the versions of the models that produced it. Field order is fixed, so the same inputs give byte-identical
records. JSON Schema files in docs/schemas/ are generated from these classes (``tidewater schemas``).

Compatibility rule: within a major version fields are only added (optional, with defaults), never removed or
retyped; a breaking change gets a new ``schema`` name suffix (``/v2``) and a new topic or a dual-write period.
"""
from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from tidewater.events import Rejected

CHURN_SCORE_SCHEMA = "tidewater.churn_score/v1"
RECOMMENDATION_SCHEMA = "tidewater.recommendation/v1"
RETENTION_OFFER_SCHEMA = "tidewater.retention_offer/v1"
DEAD_LETTER_SCHEMA = "tidewater.dead_letter/v1"
USER_ERASED_SCHEMA = "tidewater.user_erased/v1"


def deterministic_id(*parts: object) -> str:
    """A 32-hex-char id from the inputs that caused an output (stable across runs and re-deliveries). Parts are
    joined by the unit separator; when a part holds one itself (ids are free text), the parts are length-prefixed
    and hashed in their own domain instead, so ``("a", "x\x1fy")`` and ``("a\x1fx", "y")`` differ while every
    other id stays what it was."""
    texts = [str(p) for p in parts]
    if not any("\x1f" in t for t in texts):
        return hashlib.blake2b("\x1f".join(texts).encode(), digest_size=16).hexdigest()
    framed = "".join(f"{len(t)}:{t}" for t in texts)
    return hashlib.blake2b(framed.encode("utf-8", "surrogatepass"), digest_size=16,
                           person=b"tidewater-framed").hexdigest()


class ScoredItem(msgspec.Struct, frozen=True):
    item_id: str
    score: float


class ChurnScore(msgspec.Struct, kw_only=True, frozen=True):
    """A churn probability for one user at one event time."""

    schema: Literal["tidewater.churn_score/v1"] = CHURN_SCORE_SCHEMA
    event_id: str
    user_id: str
    as_of: float  # event time (epoch s) the score refers to
    score: float  # probability of churn in [0, 1]
    trigger: Literal["activity", "inactivity"]
    model_version: str
    recency_days: float
    frequency: float
    monetary: float
    segment: int | None = None
    expected_purchases: float | None = None  # in the model's horizon, when the model forecasts it
    activity_drop: bool = False  # anomaly: the last week far below the user's own recent weeks


class Recommendation(msgspec.Struct, kw_only=True, frozen=True):
    """Top-K items a user should see next."""

    schema: Literal["tidewater.recommendation/v1"] = RECOMMENDATION_SCHEMA
    event_id: str
    user_id: str
    as_of: float
    source_event_id: str  # the input event that triggered it
    items: list[ScoredItem]
    model_version: str
    index_version: str
    trigger: Literal["cadence", "vector_change"] = "cadence"
    segment: int | None = None


class RetentionOffer(msgspec.Struct, kw_only=True, frozen=True):
    """An offer the downstream offer engine should make to keep a customer."""

    schema: Literal["tidewater.retention_offer/v1"] = RETENTION_OFFER_SCHEMA
    event_id: str
    user_id: str
    as_of: float
    offer_type: str
    discount_pct: float
    churn_score: float
    reason_codes: list[str]
    items: list[ScoredItem]
    model_version: str
    expires_at: float
    segment: int | None = None
    customer_value: float | None = None  # what the policy weighed: spend so far + expected spend in the horizon
    recs_model_version: str | None = None  # the recommender that chose ``items``
    recs_index_version: str | None = None  # and its index: `tidewater index build` swaps one under the same model


class UserErased(msgspec.Struct, kw_only=True, frozen=True):
    """An erasure request was applied: the user's profile is deleted and nothing more is scored or offered for
    the events before it. A downstream that keeps data about the user (offers made) forgets it on this record.
    Like every output it is at least once: a request re-read after a crash gives the same record again."""

    schema: Literal["tidewater.user_erased/v1"] = USER_ERASED_SCHEMA
    event_id: str
    user_id: str
    as_of: float  # the request's event time
    request_event_id: str


# The largest key or value a dead letter carries (base64 makes it 4/3 as large). A bigger one is left out, with
# its SHA-256 and first bytes: Kafka's default limit is about 1 MB per record, and a letter it refuses would stop
# the worker, which would read the same record again after every restart.
DEAD_LETTER_MAX_RAW_BYTES = 256 * 1024
DEAD_LETTER_HEAD_BYTES = 1024


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    """A record that could not be decoded or validated, with where it came from."""

    schema: Literal["tidewater.dead_letter/v1"] = DEAD_LETTER_SCHEMA
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key_b64: str | None
    value_b64: str | None  # None: no value, or one too large to carry (then value_sha256 is set)
    value_size: int
    key_sha256: str | None = None  # set when the key was too large to carry
    value_sha256: str | None = None  # set when the value was too large to carry: value_b64 is None
    value_head_b64: str | None = None  # its first DEAD_LETTER_HEAD_BYTES, to see what it was


def dead_letter(rejected: "Rejected", topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None) -> DeadLetter:
    """The dead letter of a rejected input record: its bytes in base64 where they fit, else their digest."""
    key_b64, key_sha256, _ = _carried(key)
    value_b64, value_sha256, value_head_b64 = _carried(value)
    return DeadLetter(reason=rejected.reason, detail=rejected.detail[:500], topic=topic, partition=partition,
                      offset=offset, key_b64=key_b64, value_b64=value_b64, value_size=len(value or b""),
                      key_sha256=key_sha256, value_sha256=value_sha256, value_head_b64=value_head_b64)


def _carried(raw: bytes | None) -> tuple[str | None, str | None, str | None]:
    """(base64 of the bytes, or else their SHA-256 and the base64 of their head)."""
    if raw is None:
        return None, None, None
    if len(raw) <= DEAD_LETTER_MAX_RAW_BYTES:
        return base64.b64encode(raw).decode(), None, None
    return None, hashlib.sha256(raw).hexdigest(), base64.b64encode(raw[:DEAD_LETTER_HEAD_BYTES]).decode()


_encoder = msgspec.json.Encoder()


def encode_output(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


PUBLIC_SCHEMAS: dict[str, type] = {
    "churn_score.v1": ChurnScore,
    "recommendation.v1": Recommendation,
    "retention_offer.v1": RetentionOffer,
    "dead_letter.v1": DeadLetter,
    "user_erased.v1": UserErased,
}
