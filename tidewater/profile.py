"""Per-user profile: the one value the profile table stores per user, and its pure, idempotent update.

Everything about a user that the stream needs lives in one value so that one write per user per batch is
atomic: RFM, counts by type, category affinities, gap-based sessions, a bounded ring of recent events (the
churn model's input), windowed activity (tumbling 1 h / 1 d buckets; hopping 7 d / 1 d derived from the daily
buckets), the user-vector slot, and the last applied offset per source partition (the idempotency marker, with the
offsets read before the profile was created).

At-least-once delivery re-delivers events after a crash. ``apply`` skips any event whose offset is at or
below the marker for its source partition, so applying an event twice equals applying it once. A producer that
retries can also write one event twice, at two offsets: ``apply`` skips an event whose ``event_id`` is among the
user's last ``RECENT_IDS`` applied events (kept as 8-byte digests).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from operator import attrgetter, countOf

import msgspec

from tidewater import heavy_hitters
from tidewater.events import Event, Purchase

HOUR = 3600.0
DAY = 86400.0
MAX_CATEGORIES = 32
RECENT_IDS = 16  # event ids remembered per user against producer duplicates (a retry follows its original closely)
# distinct items a user bought, kept beyond the ring so that they are never recommended again, and distinct items
# clicked (viewed), likewise. 128 each until the thirtieth session: replayed through the engine, 6.1 % of ml-100k's
# recommendations held an item the user had rated (128 users); 0.2 % at 512 (3 users); none at 1,024. The bound is
# reached only by heavy users, whose profile it keeps bounded (both full, with UUID ids: 89 kB; measured)
PURCHASED_ITEMS = 1024
CLICKED_ITEMS = 1024
# ...of which at most LONG_ID_ITEMS ids longer than SHORT_ID_BYTES (UTF-8; ids may have 128 characters, 512 bytes):
# 1,024 ids of 512 bytes in each store put a profile past Kafka's 1 MB record limit, which would stop the worker at
# every restart (found by review). A store stays under LONG_ID_ITEMS x 512 + 1,024 x 48 bytes; the oldest long id
# goes first (trimming the whole store to 128 at each long id lost the short ones' coverage; found by review)
SHORT_ID_BYTES = 48
LONG_ID_ITEMS = 128
# the recs model's history of a user: the last REC_HISTORY distinct items, each at its first occurrence. The model
# reads the last 50 it has a vector for (its window); the rest is room for items it has none for (new in the
# catalogue since its training), kept for the next version, which may have them
REC_HISTORY = 100
ID_DIGEST = 8


@dataclass(frozen=True)
class ProfileConfig:
    session_gap_s: float = 1800.0
    recent_events: int = 64
    window_grace_s: float = 3600.0
    hourly_retention_s: float = 2 * DAY
    daily_retention_s: float = 35 * DAY


class RecentEvent(msgspec.Struct, array_like=True):
    """One entry of the ring of recent events (compact: stored as a JSON/msgpack array)."""

    ts: float
    type: str
    item_id: str | None = None
    category: str | None = None
    amount: float = 0.0
    quantity: int = 0


class Profile(msgspec.Struct, kw_only=True):
    user_id: str
    applied: dict[str, int] = {}  # "topic/partition" -> last applied offset
    first_ts: float = 0.0
    last_ts: float = 0.0
    last_purchase_ts: float = 0.0
    n_events: int = 0
    n_clicks: int = 0
    n_purchases: int = 0
    monetary: float = 0.0
    quantity: int = 0
    categories: dict[str, int] = {}
    session_start: float = 0.0
    session_events: int = 0
    n_sessions: int = 0
    session_seconds: float = 0.0
    recent: list[RecentEvent] = []
    hourly: dict[int, int] = {}  # tumbling 1 h window start -> events
    daily: dict[int, int] = {}  # tumbling 1 d window start -> events
    late_events: int = 0  # events too late for the windows (beyond the grace period)
    # streaming user vector (models/recs/user_vector.py): decayed sum of item vectors as float32 bytes, in the
    # vector space of recs model ``vec_version``; a new model version rebuilds it from ``rec_history``. A bytearray:
    # the recommender folds each event into it in place (msgpack stores it as bytes, as before)
    vec_sum: bytearray | None = None
    vec_weight: float = 0.0
    vec_count: int = 0
    vec_version: str = ""
    vec_at_rec: bytes | None = None  # unit vector at the last recommendation (the "changed enough" reference)
    events_since_rec: int = 0
    last_rec_ts: float = 0.0
    last_scored_ts: float = 0.0
    events_at_score: int = 0  # n_events at the last churn score: more = activity that score did not see
    recent_ids: bytes = b""  # digests of the last RECENT_IDS applied event ids, ID_DIGEST bytes each
    inactive_flagged_ts: float = 0.0
    inactivity_level: int = 0  # inactivity re-scorings since the last event (silence keeps growing)
    last_offer_ts: float = 0.0
    segment: int | None = None
    # items bought whose purchase the ring has forgotten -> how many such purchases: the last PURCHASED_ITEMS distinct
    # ones, in the order they left the ring (a dict keeps that order and moves an item in O(1)). Filled as purchases
    # leave the ring, so profiles stored before it existed fill it too
    purchased: dict[str, int] = {}
    # the same for clicked items (views), the last CLICKED_ITEMS distinct ones: a user is not recommended what they
    # looked at long ago either, as the recommender was trained and evaluated (only the ring's 64 events were
    # excluded, and 30 % of ml-100k's replayed recommendations held an item its user had rated; skew review)
    clicked: dict[str, int] = {}
    # orders (baskets: purchase lines at one time are one order, as the churn model counts purchases); -1 in a
    # profile stored before the field, which then takes its purchase lines as orders, as the value used to
    n_orders: int = -1
    ring_purchases: int = -1  # purchases in ``recent`` (kept with it: its per-type bound); -1: not counted yet
    # "topic/partition" -> the partition's offset mark when the engine created this profile: every record at or below
    # it was read before the profile existed and is not its (a late event of the user's expired or erased profile,
    # read again after a crash). Apart from ``applied``, which says what the profile itself applied
    born_marks: dict[str, int] = {}
    # the recs model's input: distinct item ids at their first occurrence, in the order they came, the last
    # REC_HISTORY (``tidewater.recommending``: the user vector and the re-ranking read the same list, as the model
    # was trained). None in a profile stored before the field: built from the ring at its next item
    rec_history: list[str] | None = None

    def __post_init__(self) -> None:  # on decode too
        _scored_before_events_at_score(self)
        if self.n_orders < 0:
            self.n_orders = self.n_purchases


def _scored_before_events_at_score(profile: "Profile | ActivityView") -> None:
    """A profile stored before ``events_at_score`` (the first day's sessions) and scored after its last event saw
    every event in that score: without this, each such user counted as active and the first tick after an upgrade
    re-scored the whole partition as "activity" (found by review). An event at the tick's own time is not in that
    tick's score (the tick fires before it is applied): strictly after, as the old rule said. Set on construction and
    decode alike (msgspec runs this for both), before any event is applied: a later event counts as new."""
    if not profile.events_at_score and profile.last_scored_ts > profile.last_ts > 0.0:
        profile.events_at_score = profile.n_events


def new_profile(user_id: str) -> Profile:
    return Profile(user_id=user_id)


def source_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def already_applied(profile: Profile, source: str, offset: int) -> bool:
    """Applied, or read before the profile was created (``born_marks``)."""
    return offset <= profile.applied.get(source, -1) or offset <= profile.born_marks.get(source, -1)


def id_digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=ID_DIGEST).digest()


def seen_event_id(profile: Profile, digest: bytes) -> bool:
    """``digest`` is among the user's last applied event ids (aligned chunks: no match across two digests)."""
    ids = profile.recent_ids
    at = ids.find(digest)
    while at > 0 and at % ID_DIGEST:
        at = ids.find(digest, at + 1)
    return at >= 0


def apply(profile: Profile, event: Event, source: str, offset: int, watermark: float,
          config: ProfileConfig = ProfileConfig()) -> bool:
    """Apply one event in place. Returns False (and changes nothing) when it was already applied: re-delivered
    (its offset) or written twice by the producer (its ``event_id``, among the user's last ``RECENT_IDS``).

    ``watermark`` is the partition's event-time watermark *before* this event; it decides whether the event
    is too late for its windows.
    """
    if already_applied(profile, source, offset):
        return False
    digest = id_digest(event.event_id)
    if seen_event_id(profile, digest):
        return False
    profile.recent_ids = (profile.recent_ids + digest)[-RECENT_IDS * ID_DIGEST:]
    profile.applied[source] = offset
    ts = event.ts
    is_purchase = isinstance(event, Purchase)

    # recency / frequency / monetary
    if profile.n_events == 0 or ts < profile.first_ts:
        profile.first_ts = ts
    profile.n_events += 1
    if is_purchase:
        if _new_order(profile, ts):
            profile.n_orders += 1
        profile.n_purchases += 1
        profile.monetary = round(profile.monetary + event.amount, 6)
        profile.quantity += event.quantity
        profile.last_purchase_ts = max(profile.last_purchase_ts, ts)
    else:
        profile.n_clicks += 1
    if event.category:
        _bump_category(profile.categories, event.category)

    # gap-based sessions (in arrival order; late events join the current session if within the gap)
    if profile.session_events == 0 or ts - profile.last_ts > config.session_gap_s:
        if profile.session_events:
            profile.session_seconds += max(0.0, profile.last_ts - profile.session_start)
        profile.n_sessions += 1
        profile.session_start = ts
        profile.session_events = 0
    profile.session_events += 1
    if ts > profile.last_ts:
        profile.inactivity_level = 0  # the silence that inactivity re-scoring counts starts again
    profile.last_ts = max(profile.last_ts, ts)

    # ring of recent events, the churn model's input
    kind = "purchase" if is_purchase else "click"
    _into_ring(profile.recent, RecentEvent(
        ts=ts, type=kind, item_id=event.item_id, category=event.category,
        amount=event.amount if is_purchase else 0.0, quantity=event.quantity if is_purchase else 0))
    if is_purchase and profile.ring_purchases >= 0:
        profile.ring_purchases += 1
    if len(profile.recent) > config.recent_events:
        _forget_beyond(profile, config.recent_events, kind)

    # windowed activity on event time, with a grace period for late events
    _count_in_windows(profile, ts, watermark, config)
    profile.events_since_rec += 1
    return True


def _into_ring(ring: list[RecentEvent], event: RecentEvent) -> None:
    """Append, or for a late event insert at its place by event time (after the events at its time, as the
    churn model's stable sort puts it; the recs protocol orders events of one time by a hash of user and item,
    which a stream cannot follow: the recs history is in arrival order, ``recommending.rec_history``). In arrival order, a late event outlived newer ones in a full ring, since the
    oldest arrivals go first: the churn model was served a view it never trained on (the last events by time).
    Rings stored before are in arrival order; an insertion into one stops at the first earlier event from the end."""
    if not ring or event.ts >= ring[-1].ts:
        ring.append(event)
        return
    at = len(ring) - 1
    while at > 0 and ring[at - 1].ts > event.ts:
        at -= 1
    ring.insert(at, event)


def _new_order(profile: Profile, ts: float) -> bool:
    """Is a purchase at ``ts`` a new order, not a line of one already counted? An order is the purchases at one
    time, as the churn model's forecast counts them (distinct purchase times). A late line is matched against the
    purchases of the ring (the review of the change: only the last purchase's time was compared)."""
    if not profile.n_purchases or ts > profile.last_purchase_ts:
        return True
    if ts == profile.last_purchase_ts:
        return False
    return not any(e.ts == ts and e.type == "purchase" for e in profile.recent)


def _forget_beyond(profile: Profile, keep: int, kind: str) -> None:
    """The ring keeps the last ``keep`` events of each type, clicks and purchases, in event-time order. One ring of
    the last ``keep`` events let a customer's browsing push their purchases out: a purchases-only churn model (as
    CDNOW's) was served fewer purchases than it was trained on, and none after 64 clicks, which scored a loyal
    customer at the no-history prior (found by a train/serve skew review). The last ``keep`` events of either kind
    are all here, so a model that reads clicks gets the same view as before (``RingScorer._ring_view``). An item
    the ring forgets is remembered apart, bought or clicked (recommendation exclusions).

    ``kind``: the type of the event just appended, the only one that can be over; the ring's purchases are counted
    in ``ring_purchases`` (this runs at each event of a heavy user: a count of the ring each time doubled the cost
    of ``apply`` for them; found by the review of the change). A ring over in the other type too (``keep``
    lowered since it was stored) is trimmed whole."""
    ring = profile.recent
    if profile.ring_purchases < 0:  # a profile stored before the count (the event just appended included)
        profile.ring_purchases = countOf(map(_TYPE_OF, ring), "purchase")
    purchases = profile.ring_purchases
    excess = (purchases if kind == "purchase" else len(ring) - purchases) - keep
    at = 0
    while excess > 0:  # the oldest of that type go (one, unless ``keep`` was lowered)
        while ring[at].type != kind:
            at += 1
        _forget(profile, ring.pop(at))
        excess -= 1
    if len(ring) - profile.ring_purchases > keep or profile.ring_purchases > keep:
        _trim_each_type(profile, keep)


_TYPE_OF = attrgetter("type")


def _forget(profile: Profile, event: RecentEvent) -> None:
    if event.type == "purchase":
        profile.ring_purchases -= 1
    if event.item_id:
        if event.type == "purchase":
            _remember(profile.purchased, event.item_id, PURCHASED_ITEMS)
        else:
            _remember(profile.clicked, event.item_id, CLICKED_ITEMS)


def _trim_each_type(profile: Profile, keep: int) -> None:
    ring = profile.recent
    purchases = countOf(map(_TYPE_OF, ring), "purchase")
    excess = {"purchase": purchases - keep, "click": len(ring) - purchases - keep}
    kept = []
    for event in ring:
        if excess.get(event.type, 0) > 0:  # among the oldest of its type beyond ``keep``
            excess[event.type] -= 1
            _forget(profile, event)
            continue
        kept.append(event)
    ring[:] = kept
    profile.ring_purchases = min(purchases, keep)  # (``_forget`` counted down from a value this replaces)


def _remember(items: dict[str, int], item_id: str, most: int) -> None:
    times = items.pop(item_id, 0)  # forgotten again: it moves to the most recent end
    items[item_id] = times + 1
    if _long_id(item_id):  # a scan of the store, only when a long id comes (most shops have none)
        long_ids = [key for key in items if _long_id(key)]
        for key in long_ids[:max(0, len(long_ids) - LONG_ID_ITEMS)]:  # the oldest beyond the bound
            del items[key]
    while len(items) > most:
        del items[next(iter(items))]


def _long_id(item_id: str) -> bool:
    """Longer than SHORT_ID_BYTES in UTF-8 (``isascii`` is a flag lookup: no encoding for ASCII ids)."""
    return len(item_id) > SHORT_ID_BYTES or (not item_id.isascii() and len(item_id.encode()) > SHORT_ID_BYTES)


def _bump_category(categories: dict[str, int], category: str) -> None:
    heavy_hitters.count(categories, category, MAX_CATEGORIES)  # bounded, and a new favourite still gets in


def _count_in_windows(profile: Profile, ts: float, watermark: float, config: ProfileConfig) -> None:
    horizon = watermark - config.window_grace_s
    counted = False
    for buckets, size, retention in ((profile.hourly, HOUR, config.hourly_retention_s),
                                     (profile.daily, DAY, config.daily_retention_s)):
        start = int(ts // size * size)
        if start + size <= horizon:  # window closed before this event arrived
            continue
        buckets[start] = buckets.get(start, 0) + 1
        counted = True
        cutoff = max(watermark, ts) - retention
        if min(buckets) + size <= cutoff:  # one C-level pass; the filter below only when something expired
            for old in [b for b in buckets if b + size <= cutoff]:
                del buckets[old]
    if not counted:
        profile.late_events += 1


def hopping_counts(profile: Profile, as_of: float, size_days: int = 7, hop_days: int = 1,
                   hops: int = 4) -> list[int]:
    """Event counts of the hopping windows (size 7 d, hop 1 d) ending at the last ``hops`` day boundaries."""
    end = int(as_of // DAY * DAY)
    out = []
    for h in range(hops):
        window_end = end - h * hop_days * int(DAY)
        window_start = window_end - size_days * int(DAY)
        out.append(events_between(profile, window_start, window_end))
    return out


def events_between(profile: Profile, start: float, end: float) -> int:
    """Events counted in the daily buckets that start in ``[start, end)``."""
    return sum(c for day, c in profile.daily.items() if start <= day < end)


def rfm(profile: Profile, as_of: float) -> dict[str, float]:
    """The recency (days), frequency (purchases) and monetary value a churn score carries."""
    return {
        "recency_days": round(max(0.0, as_of - profile.last_ts) / DAY, 4),
        "frequency": float(profile.n_purchases),
        "monetary": round(profile.monetary, 2),
    }


def top_categories(profile: Profile, n: int = 3) -> list[str]:
    return [c for c, _ in sorted(profile.categories.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Profile)


class ActivityView(msgspec.Struct, kw_only=True):
    """The fields of a stored profile that the inactivity index reads (``PartitionEngine.index_profile``).
    Decoding only these skips the ring, the windows and the vectors: rebuilding the index at an assignment
    reads every profile of the partition."""

    user_id: str
    last_ts: float = 0.0
    n_events: int = 0
    events_at_score: int = 0
    last_offer_ts: float = 0.0  # an offer at a tick the restored state has not fired yet counts in its budget
    applied: dict[str, int] = {}  # the offset marks of a state from before its own marks start from these
    last_scored_ts: float = 0.0
    born_marks: dict[str, int] = {}  # born before a deletion the restored state holds: a tombstone a crash lost

    def __post_init__(self) -> None:
        _scored_before_events_at_score(self)


_activity_decoder = msgspec.msgpack.Decoder(ActivityView)


def decode_activity(raw: bytes) -> ActivityView:
    return _activity_decoder.decode(raw)


def encode_profile(profile: Profile) -> bytes:
    return _encoder.encode(profile)


def decode_profile(raw: bytes) -> Profile:
    return _decoder.decode(raw)


def profile_to_json(profile: Profile) -> dict:
    """JSON view (GET /users/{id}/profile): the vector bytes shown as lists of floats."""
    import numpy as np

    out = msgspec.to_builtins(profile)
    for name in ("vec_sum", "vec_at_rec"):
        raw = getattr(profile, name)
        out[name] = None if raw is None else [round(float(x), 6) for x in np.frombuffer(raw, np.float32)]
    return out
