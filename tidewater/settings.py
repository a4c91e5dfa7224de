"""One typed, frozen settings object. Every field has an environment variable and a docstring.

Read with :meth:`Settings.from_env`; command-line flags override the environment through
``Settings.from_env(overrides)``. The README's settings table is generated from this module
(``tidewater settings --markdown``), so it cannot drift from the code.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, get_type_hints

from tidewater.errors import InvalidSetting


class Secret(str):
    """A string that never shows itself in logs, reprs, errors or ``--help``."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def __str__(self) -> str:  # str(secret) is what gets logged by accident
        return "***" if self else ""

    def reveal(self) -> str:
        return str.__str__(self)


def setting(default: Any, env: str, doc: str, *, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "choices": choices})


@dataclass(frozen=True)
class Settings:
    # --- Kafka connection -------------------------------------------------------------------
    bootstrap_servers: str = setting(
        "127.0.0.1:9092", "TIDEWATER_BOOTSTRAP_SERVERS",
        "Comma-separated Kafka bootstrap servers (Apache Kafka, Redpanda, MSK, or the embedded broker).")
    security_protocol: str = setting(
        "PLAINTEXT", "TIDEWATER_SECURITY_PROTOCOL", "Kafka security protocol.",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = setting(
        "PLAIN", "TIDEWATER_SASL_MECHANISM", "SASL mechanism when the protocol is SASL_*.",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_username: str = setting("", "TIDEWATER_SASL_USERNAME", "SASL user name.")
    sasl_password: Secret = setting(Secret(""), "TIDEWATER_SASL_PASSWORD", "SASL password (secret: never logged).")
    ssl_cafile: str = setting("", "TIDEWATER_SSL_CAFILE", "CA bundle (PEM) that signs the brokers' certificates.")
    ssl_certfile: str = setting("", "TIDEWATER_SSL_CERTFILE", "Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: str = setting("", "TIDEWATER_SSL_KEYFILE", "Client private key (PEM) for mutual TLS.")
    ssl_key_password: Secret = setting(Secret(""), "TIDEWATER_SSL_KEY_PASSWORD", "Password of the client key (secret).")

    # --- application and topics ---------------------------------------------------------------
    app_id: str = setting("tidewater", "TIDEWATER_APP_ID",
                          "Faust app id: the consumer group and the prefix of changelog topics.")
    partitions: int = setting(8, "TIDEWATER_PARTITIONS", "Partitions of every Tidewater topic (scale-out unit).")
    replication_factor: int = setting(1, "TIDEWATER_REPLICATION_FACTOR", "Replication factor of created topics.")
    topic_clicks: str = setting("clicks", "TIDEWATER_TOPIC_CLICKS", "Input topic of click events.")
    topic_purchases: str = setting("purchases", "TIDEWATER_TOPIC_PURCHASES", "Input topic of purchase events.")
    topic_churn_scores: str = setting("churn-scores", "TIDEWATER_TOPIC_CHURN_SCORES", "Output: churn scores.")
    topic_recommendations: str = setting("recommendations", "TIDEWATER_TOPIC_RECOMMENDATIONS",
                                         "Output: recommendation events.")
    topic_offers: str = setting("retention-offers", "TIDEWATER_TOPIC_OFFERS", "Output: retention offers.")
    topic_erasures: str = setting("user-erasures", "TIDEWATER_TOPIC_ERASURES",
                                  "Output: confirmations of erasure requests (the user's profile is deleted).")
    topic_dead_letter: str = setting("dead-letter", "TIDEWATER_TOPIC_DEAD_LETTER",
                                     "Records that failed to decode or validate, with the reason.")
    data_dir: str = setting("var/tidewater", "TIDEWATER_DATA_DIR", "Local state (RocksDB tables) of the worker.")
    store: str = setting("rocksdb://", "TIDEWATER_STORE", "Faust table store: rocksdb:// or memory://.",
                         choices=("rocksdb://", "memory://"))
    tombstone_retention_s: float = setting(
        7 * 86400.0, "TIDEWATER_TOMBSTONE_RETENTION_S",
        "How long the compacted changelogs keep deletions (their topics' delete.retention.ms, set by `tidewater "
        "topics create`). A worker's local store of a partition last caught up with its changelog more than half "
        "this long ago is discarded and restored from the changelog: a deletion (an erasure) compacted away "
        "meanwhile would never reach it, and the deleted profile would come back. A worker follows the "
        "changelogs' own delete.retention.ms where it is shorter.")
    registry_dir: str = setting("var/registry", "TIDEWATER_REGISTRY_DIR",
                                "Model registry root (churn/, recs/ with versioned artifacts).")
    model_poll_s: float = setting(5.0, "TIDEWATER_MODEL_POLL_S",
                                  "How often the worker checks the registry for a new model version (hot reload).")

    # --- consumer group behaviour -----------------------------------------------------------------
    broker_wait_s: float = setting(60.0, "TIDEWATER_BROKER_WAIT_S",
                                   "How long a starting worker waits for the Kafka cluster to answer (a pod that "
                                   "starts before its brokers) before it exits with an error (code 2).")
    session_timeout_s: float = setting(10.0, "TIDEWATER_SESSION_TIMEOUT_S",
                                       "Consumer group session timeout: how fast a dead worker is noticed.")
    rebalance_timeout_s: float = setting(
        60.0, "TIDEWATER_REBALANCE_TIMEOUT_S",
        "How long the group waits for a live worker to rejoin a rebalance. A worker first finishes computing the "
        "batch in progress (a daily tick can score tens of thousands of users), then gives the batches being sent "
        "half of this to reach Kafka; past this the group goes on without the worker, which rejoins and re-reads "
        "(duplicates, no loss). So this must exceed the longest batch; a dead worker is still noticed after the "
        "session timeout.")
    heartbeat_interval_s: float = setting(1.0, "TIDEWATER_HEARTBEAT_INTERVAL_S",
                                          "Consumer heartbeat interval; below TIDEWATER_SESSION_TIMEOUT_S.")
    producer_max_batch_bytes: int = setting(
        262144, "TIDEWATER_PRODUCER_MAX_BATCH_BYTES",
        "Producer batch size in bytes. A partition has one batch in flight at a time, so a batch's profile "
        "changelog (about 3.2 kB per user, up to twice that for one with full rings of clicks and purchases, and "
        "about 90 kB for a heavy user who also has 1,024 UUID items remembered beyond each ring) goes out in this "
        "many bytes per round trip; keep it below the broker's message.max.bytes (1 MB by default).")
    producer_timeout_s: float = setting(
        120.0, "TIDEWATER_PRODUCER_TIMEOUT_S",
        "How long an output or changelog batch may wait for the broker, retries included, before the worker stops "
        "on it (Kafka's delivery.timeout.ms default; Faust's own, 20 minutes, kept a worker stuck with /health ok).")
    broker_quirks: str = setting(
        "", "TIDEWATER_BROKER_QUIRKS",
        "Comma-separated broker work-arounds: tansu-highwater (set by `tidewater up` and the tests on Tansu), "
        "noida-fetch-wait and noida-aborted-txns (set by `tidewater up` and the tests on noida).")
    fetch_max_wait_ms: int = setting(
        100, "TIDEWATER_FETCH_MAX_WAIT_MS",
        "Longest time the broker may hold a fetch with no new records (Faust's own 1500 adds that much latency "
        "on brokers that hold empty fetches for the full wait).")
    commit_interval_s: float = setting(1.0, "TIDEWATER_COMMIT_INTERVAL_S", "How often consumed offsets are committed.")

    # --- hot path -----------------------------------------------------------------------------------
    batch_max_events: int = setting(
        5000, "TIDEWATER_BATCH_MAX_EVENTS",
        "Largest batch of events applied at once (a backlog; live traffic forms smaller batches). Each touched "
        "profile is written once per batch, so a user with several events in a batch costs one write.")
    batch_max_wait_ms: int = setting(
        50, "TIDEWATER_BATCH_MAX_WAIT_MS",
        "Longest wait for input while the inbox is empty (then timers and idle sources are checked). A batch is "
        "whatever arrived while the previous one was processed: no waiting to fill it.")
    inline_min_events: int = setting(
        1000, "TIDEWATER_INLINE_MIN_EVENTS",
        "Batches of at least this many events (a backlog) run on the event loop instead of the executor thread, "
        "unless their ticks may score more users than TIDEWATER_INLINE_MAX_SCORING: no GIL hand-overs between "
        "two busy threads (faster), but no fetching meanwhile (smaller batches keep the executor: latency).")
    inline_max_scoring: int = setting(
        2048, "TIDEWATER_INLINE_MAX_SCORING",
        "A batch whose ticks may score more users than this runs in the executor, so the event loop (consumer "
        "heartbeats, /metrics) never stops for long.")
    profile_cache_users: int = setting(
        100_000, "TIDEWATER_PROFILE_CACHE_USERS",
        "Decoded profiles a worker keeps in memory, least recently written out first (about 11-13 kB each with a "
        "half-full ring of recent events, so 1.3 GB at the default; 50-70 kB for a user with full rings of clicks and "
        "purchases; about 270 kB for a heavy user who also has 1,024 UUID items remembered beyond each ring, so 27 GB "
        "if every cached user were one, and up to about 800 kB with ids and categories of the longest): their users "
        "skip a RocksDB read and a decode. "
        "0 turns the cache off.")
    max_event_bytes: int = setting(16384, "TIDEWATER_MAX_EVENT_BYTES",
                                   "Records larger than this go to the dead-letter topic (oversized).")
    max_event_lead_s: float = setting(
        86400.0, "TIDEWATER_MAX_EVENT_LEAD_S",
        "Events whose time is further than this ahead of their Kafka record's timestamp (when it was produced) go "
        "to the dead-letter topic (ts_in_future): one event from a client with a wrong clock would otherwise move "
        "its partition's event time years ahead (a burst of inactivity ticks, every later event late). 0: no "
        "check.")
    source_idle_ms: int = setting(
        1000, "TIDEWATER_SOURCE_IDLE_MS",
        "Event-time merge of clicks+purchases: a source partition silent this long (counted in time the worker "
        "was starved of input) stops holding the other back.")

    scoring_max_batch: int = setting(
        256, "TIDEWATER_SCORING_MAX_BATCH",
        "Most users per forward pass of the churn model. The users due at an event-time tick are scored in one "
        "call, split into passes of this size (no wall-clock wait: ticks are event time, replays stay exact).")
    model_threads: int = setting(
        1, "TIDEWATER_MODEL_THREADS",
        "CPU threads of the worker's native pools: torch, and OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / "
        "MKL_NUM_THREADS where not set (FAISS, numpy). 1 where the broker shares a few cores: the default pools "
        "made small searches and products wait milliseconds on spinning threads. Raise on large hosts.")

    # --- profile and windows (event time) -------------------------------------------------------------
    session_gap_s: float = setting(1800.0, "TIDEWATER_SESSION_GAP_S", "Gap that closes a session (event time).")
    recent_events: int = setting(64, "TIDEWATER_RECENT_EVENTS",
                                 "Events of each type (clicks, purchases) kept per user in the ring (model input). At "
                                 "most 128: with the longest ids and categories, a ring of 256 takes a profile past "
                                 "Kafka's 1 MB record limit (about 500 kB at 64, 700 kB at 128).")
    window_grace_s: float = setting(3600.0, "TIDEWATER_WINDOW_GRACE_S",
                                    "Late events within this much of the watermark still count in windows.")
    clock_tick_s: float = setting(86400.0, "TIDEWATER_CLOCK_TICK_S",
                                  "Event-time tick of the inactivity timer (the watermark crossing it fires).")
    inactivity_gap_s: float = setting(30 * 86400.0, "TIDEWATER_INACTIVITY_GAP_S",
                                      "A user silent this long (event time) is scored for churn.")
    inactivity_rescore_s: float = setting(30 * 86400.0, "TIDEWATER_INACTIVITY_RESCORE_S",
                                          "After the first inactivity score, score again every this much more silence.")
    inactivity_rescores: int = setting(5, "TIDEWATER_INACTIVITY_RESCORES",
                                       "How many times a silent user is re-scored (0: only at the gap).")
    erasure_guard_s: float = setting(
        7 * 86400.0, "TIDEWATER_ERASURE_GUARD_S",
        "After an erasure request, events of that user at or before the request's time are dropped for this long "
        "(event time): a producer's retry or a late event does not rebuild the erased profile. The user id is kept "
        "in the partition state that long, no longer.")
    profile_ttl_s: float = setting(
        0.0, "TIDEWATER_PROFILE_TTL_S",
        "A profile silent this long (event time) is deleted at a tick, with a changelog tombstone; 0 keeps every "
        "profile for ever. Must exceed the last inactivity score (the gap plus the re-scores). The user's next "
        "event starts a new profile. Users are kept in the in-memory activity index until then.")

    # --- outputs ------------------------------------------------------------------------------------------
    rec_top_k: int = setting(10, "TIDEWATER_REC_TOP_K", "Items per recommendation event.")
    rec_every_events: int = setting(5, "TIDEWATER_REC_EVERY_EVENTS",
                                    "Emit a recommendation every N events of a user (cadence).")
    rec_rerank_candidates: int = setting(
        50, "TIDEWATER_REC_RERANK_CANDIDATES",
        "FAISS candidates per query that the full-rank model re-scores before the top K (0: the user vector's "
        "ranking alone).")
    rec_change_threshold: float = setting(
        0.2, "TIDEWATER_REC_CHANGE_THRESHOLD",
        "Also emit one when the user vector moved this far (1 - cosine) since the last recommendation.")
    churn_threshold: float = setting(0.6, "TIDEWATER_CHURN_THRESHOLD",
                                     "Churn probability at or above which offers are considered.")
    offer_min_value: float = setting(20.0, "TIDEWATER_OFFER_MIN_VALUE",
                                     "Customers worth less (spend so far + expected spend) get no offer.")
    offer_cooldown_s: float = setting(90 * 86400.0, "TIDEWATER_OFFER_COOLDOWN_S",
                                      "Per-user offer cooldown (event time); on top of it, one offer per lapse: "
                                      "none until the user's next event.")
    offer_daily_budget: int = setting(500, "TIDEWATER_OFFER_DAILY_BUDGET",
                                      "Offers per event-time day, all partitions together: each partition "
                                      "enforces its share (budget // partitions, plus one for budget % "
                                      "partitions of them, turning with the day).")
    offer_tiers: str = setting(
        "200:discount:20,50:discount:10,0:free_shipping:0", "TIDEWATER_OFFER_TIERS",
        "Offer tiers by customer value, `min_value:offer_type:discount_pct` comma-separated: the highest tier the "
        "value reaches applies; a value below every tier gets no offer.")
    offer_high_value: float = setting(200.0, "TIDEWATER_OFFER_HIGH_VALUE",
                                      "Customer value from which an offer carries the `high_value` reason code.")
    offer_validity_s: float = setting(14 * 86400.0, "TIDEWATER_OFFER_VALIDITY_S",
                                      "How long an offer is valid: its `expires_at` is its `as_of` plus this.")
    offer_items: int = setting(3, "TIDEWATER_OFFER_ITEMS", "Recommended items attached to each offer (0: none).")

    # --- web ------------------------------------------------------------------------------------------------
    web_host: str = setting("127.0.0.1", "TIDEWATER_WEB_HOST", "Bind address of the worker's HTTP server.")
    web_port: int = setting(6066, "TIDEWATER_WEB_PORT", "Port of the worker's HTTP server (API, metrics, dashboard).")
    web_canonical_url: str = setting(
        "", "TIDEWATER_WEB_CANONICAL_URL",
        "The URL other workers reach this one at (GET /users/{id}/profile is routed to the owner's). Empty: "
        "http://TIDEWATER_WEB_HOST:PORT, or the host name when the server binds every interface (0.0.0.0).")
    ingest_token: Secret = setting(Secret(""), "TIDEWATER_INGEST_TOKEN",
                                   "Bearer token required by POST /events (secret; at least 16 characters). Empty "
                                   "disables ingest.")
    max_request_bytes: int = setting(1 << 20, "TIDEWATER_MAX_REQUEST_BYTES", "Largest accepted POST /events body.")
    read_token: Secret = setting(
        Secret(""), "TIDEWATER_READ_TOKEN",
        "Bearer token required by the views that show users' data: GET /users/{id}/profile, /dashboard.json, "
        "/stats (secret, at least 16 characters; the dashboard page takes it as #token=). Empty: those views are "
        "open, so bind "
        "TIDEWATER_WEB_HOST to a private network.")

    @classmethod
    def from_env(cls, overrides: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if hints[f.name] is Secret:
                raw = _secret_from_file(f.metadata["env"], raw, environ)
            if raw is not None:
                values[f.name] = _coerce(f.metadata["env"], hints[f.name], raw)
        # overrides are command-line options (``--partitions``): an error names the option the user typed, not a
        # variable they never set (found by review)
        given_as = {key: "--" + key.replace("_", "-") for key, value in (overrides or {}).items() if value is not None}
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = _coerce(given_as[key], hints[key], value) if isinstance(value, str) else value
        settings = cls(**values)
        settings.validate(given_as)
        _warn_unknown_variables(environ)
        return settings

    def validate(self, given_as: Mapping[str, str] | None = None) -> None:
        """Raise InvalidSetting (a ValueError) naming the variable for a value the worker cannot run with (a tick of
        0 s divided by zero at the first event; a NaN threshold made every scored user an offer); ``given_as``:
        field -> the command-line option that set it, named instead."""
        for f in fields(self):
            value, env = getattr(self, f.name), (given_as or {}).get(f.name, f.metadata["env"])
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise InvalidSetting(f"{env}={value!r}: expected one of {', '.join(choices)}")
            if (f.name == "app_id" or f.name.startswith("topic_")) and (
                    not _KAFKA_NAME.fullmatch(value) or value in (".", "..")):  # app_id prefixes the changelogs
                raise InvalidSetting(f"{env}={value!r}: expected 1 to 249 characters of letters, digits, '.', '_' "
                                     f"and '-' (Kafka's rule for topic names)")
            if f.name in ("data_dir", "registry_dir") and not value.strip():
                # compose passes ${VAR:-} through as empty: the worker's tables went to its working directory
                raise InvalidSetting(f"{env} is empty: name a directory, or unset it for the default "
                                     f"{f.default!r}")
            if f.name == "bootstrap_servers" and not all(_host_port(entry) for entry in value.split(",")):
                raise InvalidSetting(f"{env}={value!r}: expected host:port, or several separated by commas")
            if f.name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") and value and "SSL" in self.security_protocol \
                    and not os.path.isfile(value):
                raise InvalidSetting(f"{env}={value!r}: no such file")
            if f.name in BEARER_TOKENS and value.reveal():
                token = value.reveal()
                if token != token.strip():  # the client's is stripped: it could never match (security review)
                    raise InvalidSetting(f"{env}: the token has spaces around it; a client's never does")
                if len(token) < MIN_TOKEN_CHARS:
                    raise InvalidSetting(f"{env}: a token of {len(token)} characters is too easy to guess; use at "
                                         f"least {MIN_TOKEN_CHARS} (e.g. python -c 'import secrets; "
                                         "print(secrets.token_urlsafe(24))')")
            if f.name == "offer_tiers":
                from tidewater.offers import parse_tiers

                try:
                    parse_tiers(value)
                except ValueError as exc:
                    raise InvalidSetting(f"{env}={value!r}: {exc}") from None
            if f.name in RANGES:
                low, high = RANGES[f.name]
                if not (math.isfinite(value) and (value > 0 if low == "positive" else value >= low)
                        and (high is None or value <= high)):
                    expected = "a number > 0" if low == "positive" else f"a number >= {low}"
                    raise InvalidSetting(f"{env}={value!r}: expected {expected}" + (f" and <= {high}" if high else ""))
        self._validate_names()
        last_score = self.inactivity_gap_s + self.inactivity_rescores * self.inactivity_rescore_s
        if 0 < self.profile_ttl_s <= last_score:  # the silent customer would go before the scores meant for them
            raise InvalidSetting(f"TIDEWATER_PROFILE_TTL_S={self.profile_ttl_s:g} must be 0 (keep profiles) or above "
                                 f"the last inactivity score, {last_score:g} s after the last event "
                                 f"(TIDEWATER_INACTIVITY_GAP_S + TIDEWATER_INACTIVITY_RESCORES x "
                                 f"TIDEWATER_INACTIVITY_RESCORE_S)")
        if self.heartbeat_interval_s >= self.session_timeout_s:  # the group would evict every member
            raise InvalidSetting(f"TIDEWATER_HEARTBEAT_INTERVAL_S={self.heartbeat_interval_s:g} must be below "
                                 f"TIDEWATER_SESSION_TIMEOUT_S={self.session_timeout_s:g}")

    def _validate_names(self) -> None:
        """No topic used twice (an output written to an input topic would be read back as events), and broker
        work-arounds that exist (a mistyped one was ignored). Each name's own form is checked with the fields."""
        topics = [f for f in fields(self) if f.name.startswith("topic_")]
        for i, first in enumerate(topics):
            for second in topics[i + 1:]:
                if getattr(self, first.name) == getattr(self, second.name):
                    raise InvalidSetting(f"{first.metadata['env']} and {second.metadata['env']} are both "
                                         f"{getattr(self, first.name)!r}: each topic has one role")
        unknown = sorted(q for q in self.quirks if q not in BROKER_QUIRKS)
        if unknown:
            raise InvalidSetting(f"TIDEWATER_BROKER_QUIRKS={self.broker_quirks!r}: unknown {', '.join(unknown)} "
                                 f"(known: {', '.join(BROKER_QUIRKS)})")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def quirks(self) -> frozenset[str]:
        """The broker work-arounds of ``TIDEWATER_BROKER_QUIRKS``."""
        return frozenset(q for q in (q.strip() for q in self.broker_quirks.split(",")) if q)

    @property
    def input_topics(self) -> tuple[str, str]:
        return (self.topic_clicks, self.topic_purchases)

    @property
    def output_topics(self) -> tuple[str, str, str, str]:
        return (self.topic_churn_scores, self.topic_recommendations, self.topic_offers, self.topic_erasures)

    def all_topics(self) -> tuple[str, ...]:
        return (*self.input_topics, *self.output_topics, self.topic_dead_letter)


BEARER_TOKENS = ("ingest_token", "read_token")  # compared with what HTTP clients send
MIN_TOKEN_CHARS = 16
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
# the embedded brokers' work-arounds (streams/broker_quirks.py)
BROKER_QUIRKS = ("tansu-highwater", "noida-fetch-wait", "noida-aborted-txns")

# the accepted values of every numeric setting: (lowest, highest or None); "positive" means > 0
_POSITIVE = ("positive", None)
_NON_NEGATIVE = (0, None)
RANGES: dict[str, tuple[Any, Any]] = {
    "partitions": _POSITIVE, "replication_factor": _POSITIVE, "model_poll_s": _POSITIVE, "broker_wait_s": _POSITIVE,
    "session_timeout_s": _POSITIVE, "rebalance_timeout_s": _POSITIVE, "heartbeat_interval_s": _POSITIVE, "producer_max_batch_bytes": _POSITIVE,
    "producer_timeout_s": _POSITIVE,
    "fetch_max_wait_ms": _NON_NEGATIVE, "commit_interval_s": _POSITIVE, "batch_max_events": _POSITIVE,
    "batch_max_wait_ms": _NON_NEGATIVE, "inline_min_events": _NON_NEGATIVE, "inline_max_scoring": _NON_NEGATIVE,
    "profile_cache_users": _NON_NEGATIVE, "max_event_bytes": _POSITIVE, "max_event_lead_s": _NON_NEGATIVE, "source_idle_ms": _NON_NEGATIVE,
    "scoring_max_batch": _POSITIVE, "model_threads": _POSITIVE, "session_gap_s": _POSITIVE,
    "recent_events": (1, 128), "window_grace_s": _NON_NEGATIVE, "clock_tick_s": _POSITIVE,
    "inactivity_gap_s": _POSITIVE, "inactivity_rescore_s": _POSITIVE, "inactivity_rescores": _NON_NEGATIVE,
    "erasure_guard_s": _NON_NEGATIVE, "profile_ttl_s": _NON_NEGATIVE, "tombstone_retention_s": _POSITIVE, "rec_top_k": _POSITIVE, "rec_every_events": _POSITIVE,
    "rec_rerank_candidates": _NON_NEGATIVE, "rec_change_threshold": (0, 2),  # 1 - cosine
    "churn_threshold": (0, 1), "offer_min_value": _NON_NEGATIVE, "offer_cooldown_s": _NON_NEGATIVE,
    "offer_daily_budget": _NON_NEGATIVE, "offer_high_value": _NON_NEGATIVE, "offer_validity_s": _POSITIVE,
    "offer_items": _NON_NEGATIVE, "web_port": (0, 65535), "max_request_bytes": _POSITIVE,
}


# read by the test suite, not by Tidewater itself
NOT_SETTINGS = frozenset({"TIDEWATER_TEST_BROKER", "TIDEWATER_CHROMIUM"})
_warned_unknown: set[str] = set()


def unknown_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """TIDEWATER_* variables that name no setting -> the setting meant, if one is close: a misspelt name
    (TIDEWATER_PARTITON) was ignored without a word, and the worker ran on the default (found by review)."""
    known = {f.metadata["env"] for f in fields(Settings)}
    hints = get_type_hints(Settings)
    known |= {f.metadata["env"] + "_FILE" for f in fields(Settings) if hints[f.name] is Secret} | NOT_SETTINGS
    return {name: next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None)
            for name in sorted(environ) if name.startswith("TIDEWATER_") and name not in known}


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets, its zone's ``%`` escaped (``fe80::1%25eth0``).
    Unbracketed, ``http://fd00::1:6066`` was no URL: Faust refused it and the worker did not start (review)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return f"[{bare.replace('%', '%25')}]" if ":" in bare else bare


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Once per process and name: settings are read by many commands and the worker, each time the same."""
    for name, meant in unknown_variables(environ).items():
        if name not in _warned_unknown:
            _warned_unknown.add(name)
            logging.getLogger("tidewater.settings").warning(
                "%s is not a Tidewater setting: ignored%s (`tidewater settings` lists them)", name,
                f"; did you mean {meant}?" if meant else "")


def _secret_from_file(env: str, raw: str | None, environ: Mapping[str, str]) -> str | None:
    """A secret's value, or the contents of the file that ``<env>_FILE`` names (Docker and Kubernetes secrets are
    files: a value in the environment shows in ``docker inspect`` and in /proc/<pid>/environ). One final line
    break is dropped, as ``echo`` writes one, and a byte-order mark; an empty file is an error."""
    path = environ.get(env + "_FILE")
    if not path:  # unset, or empty as compose passes an unset ${VAR_FILE:-}
        return raw
    if raw:  # an empty one is not set (compose passes ${VAR:-} through as empty)
        raise InvalidSetting(f"{env} and {env}_FILE are both set: use one")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of the token
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSetting(f"{env}_FILE={path!r}: cannot read it ({exc.__class__.__name__})") from None
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not text:  # an empty token turns the check off: a file named for one must hold one (found by review)
        raise InvalidSetting(f"{env}_FILE={path!r}: the file is empty")
    return text


def _host_port(entry: str) -> bool:
    host, sep, port = entry.strip().rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind is bool:
            return str(raw).lower() in ("1", "true", "yes", "on")
        if kind is Secret:
            return Secret(raw)
        return kind(raw)
    except (TypeError, ValueError):
        raise InvalidSetting(f"{name}: cannot read {raw!r} as {getattr(kind, '__name__', kind)}") from None


def settings_table_markdown() -> str:
    rows = ["| env | default | description |", "|---|---|---|"]
    for f in fields(Settings):
        default = f.default
        shown = "" if isinstance(default, Secret) else f"`{default}`"
        doc = f.metadata["doc"]
        if f.name in RANGES:
            low, high = RANGES[f.name]
            doc += " Range: " + ("> 0" if low == "positive" else f">= {low}") + (f", <= {high}" if high else "") + "."
        if f.metadata.get("choices"):
            doc += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
        if isinstance(default, Secret):
            doc += f" Or `{f.metadata['env']}_FILE`: a file that holds it (a Docker or Kubernetes secret)."
        rows.append(f"| `{f.metadata['env']}` | {shown} | {doc} |")
    return "\n".join(rows)
