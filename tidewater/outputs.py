"""Output event schemas: the public contract with the downstream offer engine.

Every output carries ``schema`` (name/version), a deterministic ``event_id`` derived from its inputs (an
idempotency key: re-deliveries after a crash produce the same id), the event time it refers to (``as_of``)
and the versions of the models that produced it. Field order is fixed, so the same inputs give byte-identical
records. JSON Schema files in docs/schemas/ are generated from these classes (``tidewater schemas``).

Compatibility rule: within a major version fields are only added (optional, with defaults), never removed or
retyped; a breaking change gets a new ``schema`` name suffix (``/v2``) and a new topic or a dual-write period. New
values of free string fields (``reason_codes``, ``offer_type``) may appear within a version. Each field's
description (``_doc``) is part of the contract: the schema files carry it.
"""
from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Annotated, Literal

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


def _doc(text: str) -> msgspec.Meta:
    """A field's description in the generated JSON Schema (docs/schemas/): units, ranges, when it is null."""
    return msgspec.Meta(description=text)


_SCHEMA_DOC = ("The record's schema, name/major version: a consumer reads the records of the versions it knows "
               "(fields are only added within one).")
EventId = Annotated[str, _doc("Deterministic id from the inputs that caused this output (32 hex chars): an "
                              "idempotency key, the same when a crash makes the output again.")]
UserId = Annotated[str, _doc("The customer (the input events' user_id); also the record's key.")]
AsOf = Annotated[float, _doc("Event time the output refers to, in epoch seconds (UTC): the tick or the input event, "
                             "never the wall clock.")]
Segment = Annotated[int | None, _doc("The customer's cluster (k-means over user vectors) in the recommender model "
                                     "named by segment_model_version; null while no recommender model serves, "
                                     "for a customer without a user vector, or from a model without clusters. "
                                     "Renumbered when the model is retrained: compare segments only under one "
                                     "segment_model_version.")]
SegmentModel = Annotated[str | None, _doc("The recommender model whose clusters number segment (null with "
                                          "segment; older records lack it).")]


class ScoredItem(msgspec.Struct, frozen=True):
    item_id: Annotated[str, _doc("The item, as in the input events' item_id.")]
    score: Annotated[float, _doc("The recommender's score (higher first; a popularity count for the popularity "
                                 "placeholder); comparable only within one output. 0.0 for every item of a "
                                 "customer without a user vector (no item of theirs is in the model), who gets "
                                 "the model's most popular items, still best first.")]


class ChurnScore(msgspec.Struct, kw_only=True, frozen=True):
    """A churn probability for one user at one event time."""

    schema: Annotated[Literal["tidewater.churn_score/v1"], _doc(_SCHEMA_DOC)] = CHURN_SCORE_SCHEMA
    event_id: EventId
    user_id: UserId
    as_of: AsOf
    score: Annotated[float, _doc("Calibrated probability, in [0, 1], that the customer makes no purchase in the "
                                 "model's horizon.")]
    trigger: Annotated[Literal["activity", "inactivity"], _doc(
        "activity: the customer had events since the last tick; inactivity: the silence timer (no event for "
        "TIDEWATER_INACTIVITY_GAP_S, then every TIDEWATER_INACTIVITY_RESCORE_S).")]
    model_version: Annotated[str, _doc("The churn model version that scored (heuristic:recency-v1: the "
                                       "placeholder, before a model loads or when scoring failed).")]
    recency_days: Annotated[float, _doc("Days from the customer's last event (click or purchase) to as_of.")]
    frequency: Annotated[float, _doc("Purchases so far (purchase lines: an order of three items counts 3).")]
    monetary: Annotated[float, _doc("Spend so far, in the input events' currency.")]
    segment: Segment = None
    expected_purchases: Annotated[float | None, _doc(
        "Expected purchases in the model's horizon; null when the model does not forecast.")] = None
    activity_drop: Annotated[bool, _doc("Anomaly: the last 7 days hold under a quarter of the customer's own "
                                        "average week over their last 3 active weeks, for a customer averaging "
                                        "2 events a week or more there.")] = False
    segment_model_version: SegmentModel = None
    horizon_days: Annotated[float | None, _doc(
        "Days after as_of that score and expected_purchases are about (the churn model's training horizon); null "
        "for the placeholder, which has none.")] = None


class Recommendation(msgspec.Struct, kw_only=True, frozen=True):
    """Top-K items a user should see next."""

    schema: Annotated[Literal["tidewater.recommendation/v1"], _doc(_SCHEMA_DOC)] = RECOMMENDATION_SCHEMA
    event_id: EventId
    user_id: UserId
    as_of: AsOf
    source_event_id: Annotated[str, _doc("The input event that triggered it.")]
    items: Annotated[list[ScoredItem], _doc("Up to TIDEWATER_REC_TOP_K items, best first, none in the customer's "
                                            "ring of recent events nor among the last 1,024 distinct items they "
                                            "bought or the last 1,024 they clicked before it (at most 128 of them ids "
                                            "over 48 bytes).")]
    model_version: Annotated[str, _doc("The recommender version (baseline:popularity-v1: the placeholder).")]
    index_version: Annotated[str, _doc("The FAISS index that answered: the model's own (its version) or one "
                                       "built later (<model>/<index>); none for the placeholder.")]
    trigger: Annotated[Literal["cadence", "vector_change"], _doc(
        "cadence: every TIDEWATER_REC_EVERY_EVENTS events; vector_change: the customer's vector moved by "
        "TIDEWATER_REC_CHANGE_THRESHOLD (1 - cosine) or more since their last recommendation.")] = "cadence"
    segment: Segment = None
    segment_model_version: SegmentModel = None


class RetentionOffer(msgspec.Struct, kw_only=True, frozen=True):
    """An offer the downstream offer engine should make to keep a customer."""

    schema: Annotated[Literal["tidewater.retention_offer/v1"], _doc(_SCHEMA_DOC)] = RETENTION_OFFER_SCHEMA
    event_id: EventId
    user_id: UserId
    as_of: AsOf
    offer_type: Annotated[str, _doc("From the configured tiers (TIDEWATER_OFFER_TIERS; by default discount or "
                                    "free_shipping).")]
    discount_pct: Annotated[float, _doc("Discount in percent, 0 to 100 (0 for an offer that is not a discount).")]
    churn_score: Annotated[float, _doc("The churn probability, in [0, 1], that made the offer.")]
    reason_codes: Annotated[list[str], _doc(
        "Why: high_churn_risk (always), long_inactivity (silent for TIDEWATER_INACTIVITY_GAP_S or more), "
        "high_value (customer_value of TIDEWATER_OFFER_HIGH_VALUE or more), activity_drop (see the churn "
        "score's). New codes may be added within v1: ignore the ones you do not know.")]
    items: Annotated[list[ScoredItem], _doc(
        "The customer's top recommended items, up to TIDEWATER_OFFER_ITEMS; fewer or none when the recommender "
        "has nothing the customer has not seen.")]
    model_version: Annotated[str, _doc("The churn model version that scored.")]
    expires_at: Annotated[float, _doc("Event time (epoch seconds) after which the offer lapses: as_of + "
                                      "TIDEWATER_OFFER_VALIDITY_S.")]
    segment: Segment = None
    customer_value: Annotated[float | None, _doc(
        "What the policy weighed: spend so far + expected spend in the model's horizon.")] = None
    recs_model_version: Annotated[str | None, _doc("The recommender that chose items.")] = None
    recs_index_version: Annotated[str | None, _doc(
        "The index that chose items (tidewater index build swaps one in under the same recommender version).")] = None
    segment_model_version: SegmentModel = None


class UserErased(msgspec.Struct, kw_only=True, frozen=True):
    """An erasure request was applied: the user's profile is deleted and nothing more is scored or offered for
    the events before it. A downstream that keeps data about the user (offers made) forgets it on this record.
    Like every output it is at least once: a request re-read after a crash gives the same record again."""

    schema: Annotated[Literal["tidewater.user_erased/v1"], _doc(_SCHEMA_DOC)] = USER_ERASED_SCHEMA
    event_id: EventId
    user_id: UserId
    as_of: Annotated[float, _doc("The request's event time, in epoch seconds (UTC).")]
    request_event_id: Annotated[str, _doc("The erasure request's event_id.")]


# The largest key or value a dead letter carries (base64 makes it 4/3 as large). A bigger one is left out, with
# its SHA-256 and first bytes: Kafka's default limit is about 1 MB per record, and a letter it refuses would stop
# the worker, which would read the same record again after every restart.
DEAD_LETTER_MAX_RAW_BYTES = 256 * 1024
DEAD_LETTER_HEAD_BYTES = 1024


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    """A record that could not be decoded or validated, with where it came from."""

    schema: Annotated[Literal["tidewater.dead_letter/v1"], _doc(_SCHEMA_DOC)] = DEAD_LETTER_SCHEMA
    reason: Annotated[str, _doc("Why it was refused, one of: oversized, malformed_json, unknown_event_type, "
                                "missing_field, invalid_field, wrong_topic, key_mismatch, ts_in_future (new "
                                "values may appear within v1). `tidewater redrive --reason` selects by it.")]
    detail: Annotated[str, _doc("The validation message: which field and what was wrong (at most 500 "
                                "characters).")]
    topic: Annotated[str, _doc("The input topic the record was read from (where `tidewater redrive` sends it "
                               "back).")]
    partition: Annotated[int, _doc("Its partition in that topic.")]
    offset: Annotated[int, _doc("Its offset in that partition.")]
    key_b64: Annotated[str | None, _doc("The record's key, base64; null for no key, or one too large to carry "
                                        "(then key_sha256 is set).")]
    value_b64: Annotated[str | None, _doc(  # None: no value, or one too large to carry (then value_sha256 is set)
        f"The record's value, byte for byte, base64; null for no value, or one over {DEAD_LETTER_MAX_RAW_BYTES:,} "
        "bytes (then value_sha256 and value_head_b64 are set).")]
    value_size: Annotated[int, _doc("The value's size in bytes (0 for none).")]
    key_sha256: Annotated[str | None, _doc("SHA-256 (hex) of a key too large to carry; else null.")] = None
    value_sha256: Annotated[str | None, _doc("SHA-256 (hex) of a value too large to carry; else null.")] = None
    value_head_b64: Annotated[str | None, _doc(
        f"The first {DEAD_LETTER_HEAD_BYTES:,} bytes of a value too large to carry, base64, to see what it was; "
        "else null.")] = None


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
