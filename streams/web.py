"""HTTP views served by each worker (Faust web): ingest, profiles, health, metrics, stats, dashboard."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from importlib import resources
from typing import Any

import faust
import msgspec
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import lag, metrics
from streams.ingress import consumer_state
from streams.producing import key_partition
from tidewater.events import Clock, Rejected, decode_event, encode_event, too_far_ahead
from tidewater.profile import decode_profile, profile_to_json
from tidewater.settings import Settings
from tidewater.sources import topic_kind
from yarl import URL

log = logging.getLogger("tidewater.web")

MAX_REJECTIONS_LISTED = 100  # a 422 names this many bad events, and counts the rest
ROUTED_HEADER = "X-Tidewater-Routed"  # set on a request forwarded to the owner of a key: it is never forwarded again
ROUTE_TIMEOUT_S = 10.0
BODY_READ_TIMEOUT_S = 30.0  # POST /events: the whole body within this, else 408
INGEST_DEADLINE_S = 30.0  # POST /events answers by then, with the events Kafka has not acknowledged as failed
VALIDATE_INLINE_MAX = 1000  # larger batches are validated in a thread, not on the event loop
MAX_EVENTS_PER_REQUEST = 10_000  # POST /events: more is a 413 (1 MiB of "[0,0,...]" held the GIL for 1.2 s)
HTTP_CLOCK_LEAD_S = 300.0  # a clock posted ahead of now by more is refused (ts_in_future)
MAX_CONCURRENT_INGESTS = 4  # POST /events batches over VALIDATE_INLINE_MAX validated at once; more: 429
# on every answer: no content sniffing (a JSON answer holding a user id read as HTML), no framing, no referrer
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def dashboard_csp(page: str) -> str:
    """The dashboard's Content-Security-Policy: its own inline script and style by hash, fetches to its own
    origin, nothing else (no other scripts, frames, forms or plug-ins; not framed by another site)."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
            "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


async def _add_security_headers(request: Request, response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def bearer_ok(request: Request, token: str) -> bool:
    """``Authorization: Bearer <token>`` (the scheme in any case, RFC 7235), compared in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # aiohttp keeps undecodable bytes as surrogates
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                                              token.encode())


def register(app: faust.App, s: Settings, pipeline: Any, profiles: Any) -> None:
    app.web.web_app.on_response_prepare.append(_add_security_headers)
    topics = {"click": app.topic(s.topic_clicks, key_serializer="raw", value_serializer="raw"),
              "purchase": app.topic(s.topic_purchases, key_serializer="raw", value_serializer="raw")}

    def unauthorized(view: View, what: str) -> Response:
        return view.json({"error": f"missing or wrong bearer token ({what})"}, status=401,
                         headers={"WWW-Authenticate": 'Bearer realm="tidewater"'})

    def may_read(request: Request) -> bool:
        """The views with users' data: open without TIDEWATER_READ_TOKEN, else its bearer token. Not in the query
        string: there it ended up in proxy logs, browser history and the forwarded URL (found by review); the
        dashboard page reads its own #token= and sends it as a bearer token."""
        token = s.read_token.reveal()
        return not token or bearer_ok(request, token)

    ingesting = asyncio.Semaphore(MAX_CONCURRENT_INGESTS)  # large batches in validation threads at once

    @app.page("/events")
    class Ingest(View):
        """POST a JSON array of events (or one object). Bearer token required; each event validated."""

        async def post(self, request: Request) -> Response:
            token = s.ingest_token.reveal()
            if not token:
                return self.json({"error": "ingest disabled: set TIDEWATER_INGEST_TOKEN"}, status=503)
            if not bearer_ok(request, token):
                return unauthorized(self, "TIDEWATER_INGEST_TOKEN")
            def too_big() -> Response:
                return self.json({"error": f"body over {s.max_request_bytes} bytes"}, status=413)

            if request.content_length is not None and request.content_length > s.max_request_bytes:
                return too_big()
            async def read_body() -> bytes | None:  # None: over the limit
                chunks, size = [], 0  # read here, not with request.read(): aiohttp's cap is 1 MiB whatever is set
                async for chunk in request.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > s.max_request_bytes:
                        return None
                    chunks.append(chunk)
                return b"".join(chunks)

            try:  # a client that sends its body a byte at a time held a request (and its buffer) for as long as it
                body = await asyncio.wait_for(read_body(), BODY_READ_TIMEOUT_S)  # liked (found by review)
            except asyncio.TimeoutError:
                return self.json({"error": f"request body not received within {BODY_READ_TIMEOUT_S:g} s"},
                                 status=408)
            if body is None:
                return too_big()
            try:
                items = msgspec.json.decode(body)
            except msgspec.DecodeError as exc:
                return self.json({"error": f"malformed JSON: {exc}"}, status=400)
            except RecursionError:
                return self.json({"error": "malformed JSON: nested too deeply"}, status=400)
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list) or not items:
                return self.json({"error": "expected a JSON object or a non-empty array of events"}, status=400)
            if len(items) > MAX_EVENTS_PER_REQUEST:
                return self.json({"error": f"{len(items):,} events in one request; at most "
                                           f"{MAX_EVENTS_PER_REQUEST:,}"}, status=413)
            if len(items) > VALIDATE_INLINE_MAX:  # a big batch off the event loop (heartbeats, the batch loop)
                # but a bounded number at once: parallel big requests, each validated in a thread, starved the
                # engine thread and the consumer's heartbeats of the GIL (found by a security review)
                if ingesting.locked():
                    return self.json({"error": f"{MAX_CONCURRENT_INGESTS} large requests are being validated: "
                                               "retry shortly"}, status=429, headers={"Retry-After": "1"})
                async with ingesting:
                    decoded, errors, rejected_total = await asyncio.get_running_loop().run_in_executor(
                        None, _validated, items, s)
            else:
                decoded, errors, rejected_total = _validated(items, s)
            if rejected_total:  # all or nothing: the web tier fixes the batch and resends it
                return self.json({"error": "invalid events", "rejected_total": rejected_total,
                                  "rejected": errors}, status=422)
            failed, unanswered, first_error = await _produce(topics, s.partitions, decoded)
            if failed:  # 202 means Kafka has every event, not that the producer queued them
                return self.json({"error": f"not every event reached Kafka ({first_error!r}): resend the events "
                                           "listed in failed_indices, only those (an event already stored is skipped "
                                           "by its event_id only among its user's last 16; those in "
                                           "unconfirmed_indices were still on their way and may yet arrive)",
                                  "failed_indices": failed, "unconfirmed_indices": unanswered,
                                  "accepted": len(decoded) - len(failed)}, status=503)
            return self.json({"accepted": len(decoded)}, status=202)

    @app.page("/users/{user_id}/profile")
    class UserProfile(View):
        async def get(self, request: Request, user_id: str) -> Response:
            if not may_read(request):
                return unauthorized(self, "TIDEWATER_READ_TOKEN")
            owner = _owner(app, profiles, user_id, s.partitions)
            if owner is OWNER_UNKNOWN:  # a local 404 would say that a user another worker holds does not exist
                return self.json({"error": "the worker owning this user is not known yet (starting or "
                                           "rebalancing): retry shortly"}, status=503, headers={"Retry-After": "2"})
            if owner is not None:  # another worker's partition: forwarded once, with a deadline
                return await _forward(self, app, request, owner)
            # restoring: the local store may be behind its changelog, with a profile changed or erased since by
            # another worker (a local hit was answered, an erased profile included; found by review)
            if app.in_recovery or app.rebalancing:
                return self.json({"error": "this worker is restoring its partitions: retry shortly"},
                                 status=503, headers={"Retry-After": "2"})
            raw = profiles.get(user_id.encode())
            if raw is None:
                return self.json({"error": f"no profile for user {user_id!r}"}, status=404)
            return self.json(profile_to_json(decode_profile(raw)))

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            try:
                assignment = app.consumer.assignment()
            except Exception:  # noqa: BLE001 - the web server starts before the consumer: nothing assigned yet
                assignment = set()
            assigned = sorted({tp.partition for tp in assignment if tp.topic in s.input_topics})
            # "starting", with HTTP 503, until the registry's models are loaded (no input is processed before): a
            # readiness probe that reads only the status code works too
            failed = getattr(pipeline, "_send_failed", None) is not None  # the worker is stopping on it
            status = "failed" if failed else "ok" if pipeline.ready else "starting"
            return self.json({"status": status, "partitions": assigned,
                              "processed": pipeline.processed, "dropped_at_rebalance": pipeline.dropped_at_rebalance,
                              "models": {"churn": pipeline.churn_slot.scorer.version,
                                         "recs": pipeline.recs_slot.recommender.version,
                                         "index": pipeline.recs_slot.recommender.index_version}},
                             status=200 if status == "ok" else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            if not may_read(request):
                return unauthorized(self, "TIDEWATER_READ_TOKEN")
            counters: dict[str, int] = {}
            # the engines' counters and those of engines dropped at revocations (copies: the engine thread may add
            # keys meanwhile)
            counted = [getattr(e, "counters", {}) for e in list(pipeline.engines.values())]
            for source in [*counted, getattr(pipeline, "retired_counters", {})]:
                for (name, label), n in list(source.items()):
                    counters[f"{name}:{label}"] = counters.get(f"{name}:{label}", 0) + n
            watermarks = {p: getattr(e.state, "watermark", None) for p, e in list(pipeline.engines.items())}
            return self.json({"processed": pipeline.processed, "acks": pipeline.throughput.as_dict(),
                              "counters": counters, "watermarks": watermarks,
                              "inbox": len(pipeline.inbox), "held": pipeline.held(),
                              "consumer": consumer_state(app.consumer)})

    # --- the dashboard: one self-contained page polling dashboard.json ---------------------------------
    live = getattr(pipeline, "live", None)  # streams.live_stats.LiveStats, fed by Pipeline._flush
    lag.install(app, s.input_topics, sink=live,  # tidewater_consumer_lag, also shown on the page
                markers_only=getattr(pipeline, "committed_through_markers", None))
    page = resources.files("streams").joinpath("dashboard.html").read_text(encoding="utf-8")
    csp = dashboard_csp(page)

    @app.page("/dashboard")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.html(page, headers={"Cache-Control": "no-store", "Content-Security-Policy": csp})

    @app.page("/dashboard.json")
    class DashboardData(View):
        async def get(self, request: Request) -> Response:
            if not may_read(request):
                return unauthorized(self, "TIDEWATER_READ_TOKEN")
            return self.bytes(msgspec.json.encode(dashboard_data(s, pipeline, live)),
                              content_type="application/json", headers={"Cache-Control": "no-store"})


def _validated(items: list[Any], s: Settings) -> tuple[list[tuple[int, Any, bytes]], list[dict], int]:
    """(index, event, the record value to send) of the valid events, the first ``MAX_REJECTIONS_LISTED``
    rejections (index, reason, detail) and the number of rejected events. An event the worker would dead-letter as
    ts_in_future (its record is stamped now) is refused here instead. Only the listed rejections are built: a
    1 MiB body of 350,000 empty objects built a dict for each, 136 MiB (found by review)."""
    decoded, errors, rejected = [], [], 0
    now = time.time()
    # a clock moves every partition's event time: posted a day ahead (TIDEWATER_MAX_EVENT_LEAD_S) it made the next
    # day's real events late for their windows and fired inactivity timers early (found by a security review). A
    # web tier posts the time now; replays that need other times write clock records to Kafka (`replay --close`)
    latest_clock = now + HTTP_CLOCK_LEAD_S
    for i, item in enumerate(items):
        event = decode_event(msgspec.json.encode(item), max_bytes=s.max_event_bytes)
        value = b"" if isinstance(event, Rejected) else encode_event(event)  # what is sent, with its defaults
        if len(value) > s.max_event_bytes:
            event = Rejected("oversized", f"{len(value)} bytes as sent > limit {s.max_event_bytes}")
        if not isinstance(event, Rejected) and too_far_ahead(event.ts, now, s.max_event_lead_s):
            event = Rejected("ts_in_future", f"ts {event.ts:.3f} is more than TIDEWATER_MAX_EVENT_LEAD_S="
                                             f"{s.max_event_lead_s:g} s ahead of now")
        elif isinstance(event, Clock) and event.ts > latest_clock:
            event = Rejected("ts_in_future", f"a clock at {event.ts:.3f} is more than {HTTP_CLOCK_LEAD_S:g} s "
                                             "ahead of now: post the time now")
        if isinstance(event, Rejected):
            rejected += 1
            if len(errors) < MAX_REJECTIONS_LISTED:
                errors.append({"index": i, "reason": event.reason, "detail": event.detail})
        elif not rejected:  # once one is rejected nothing is sent: the valid ones need not be kept
            decoded.append((i, event, value))
    return decoded, errors, rejected


async def _produce(topics: dict[str, Any], partitions: int, decoded: list[tuple[int, Any, bytes]]
                   ) -> tuple[list[int], list[int], BaseException | None]:
    """Send the events keyed by user (erasure requests with the clicks) and wait for Kafka; the clocks go out once,
    the latest, to every partition (one per clock event multiplied the sends for the same effect). Returns the
    indices of the events not known to be in Kafka, those of them still unanswered at the deadline (they may yet
    arrive), and the first error.

    Within ``INGEST_DEADLINE_S`` in all, queueing included: the producer retries an unreachable Kafka for up to its
    request timeout (20 min), queueing waits while a partition's batch is full, and the client, gone long before,
    never learnt which events to resend (found by review)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + INGEST_DEADLINE_S
    sends: list[tuple[list[int], Any]] = []  # (indices of the events it carries, its delivery)
    clocks = [(i, e, v) for i, e, v in decoded if isinstance(e, Clock)]
    clock_indices = [i for i, _, _ in clocks]  # one list for all partitions' sends: queued only once all are

    async def queue_all() -> None:
        for i, event, value in decoded:
            if not isinstance(event, Clock):
                sends.append(([i], await topics[topic_kind(event)].send(key=event.user_id.encode(), value=value)))
        if clocks:
            latest = max(clocks, key=lambda c: c[1].ts)[2]
            for partition in range(partitions):  # = the topic's (checked at start)
                sends.append((clock_indices, await topics["click"].send(value=latest, partition=partition)))

    try:
        await asyncio.wait_for(queue_all(), timeout=INGEST_DEADLINE_S)
    except Exception as exc:  # noqa: BLE001 - the rest could not even be queued (an error, or the deadline)
        if isinstance(exc, asyncio.TimeoutError):
            exc = TimeoutError(f"not queued for Kafka within {INGEST_DEADLINE_S:g} s")
        # a clock sent to some partitions only is not in Kafka: its indices are among the failed
        queued = {i for indices, _ in sends if indices is not clock_indices for i in indices}
        sends.append(([i for i, _, _ in decoded if i not in queued], _failed(exc)))
    deliveries = [asyncio.ensure_future(delivery) for _, delivery in sends]
    if deliveries:
        await asyncio.wait(deliveries, timeout=max(0.0, deadline - loop.time()))
    late = TimeoutError(f"not acknowledged by Kafka within {INGEST_DEADLINE_S:g} s")
    results = [(d.exception() or d.result()) if d.done() else late for d in deliveries]
    errors = [r for r in results if isinstance(r, BaseException)]
    failed = sorted({i for (indices, _), result in zip(sends, results) if isinstance(result, BaseException)
                     for i in indices})
    unanswered = sorted({i for (indices, _), result in zip(sends, results) if result is late for i in indices})
    return failed, unanswered, errors[0] if errors else None


async def _failed(exc: BaseException) -> None:
    raise exc


OWNER_UNKNOWN = object()


def _owner(app: faust.App, table: Any, user_id: str, partitions: int) -> Any:
    """The URL of the worker that owns ``user_id``'s partition (the producers' default partitioner over
    ``partitions``, as every input is keyed), None when it is this one, ``OWNER_UNKNOWN`` while the group's
    assignment does not name one (starting, rebalancing: it was answered here, a 404 for a user another worker
    holds; found by review). Faust's ``key_store`` hashed through its producer's metadata, which knows only the
    topics it has sent to: on a worker that had not written the changelog yet it raised every time."""
    from faust.types import TP

    partition = key_partition(user_id.encode(), list(range(partitions)))
    url = app.assignor._tps_url.get(TP(table.changelog_topic.get_topic_name(), partition))
    if url is None:
        return OWNER_UNKNOWN
    owner, ident = URL(url), app.router._urlident
    return None if ident(owner) == ident(app.conf.canonical_url) else owner


async def _forward(view: View, app: faust.App, request: Request, owner: Any) -> Response:
    """The request to the owner's worker, once: a request that was already forwarded is answered 503 (the workers
    disagree on the owner during a rebalance: they bounced it between them until the connection pool was full),
    and an unreachable owner (died, not yet replaced) is a 503 too, not a 500 with a traceback (found by review)."""
    import aiohttp

    if request.headers.get(ROUTED_HEADER):
        return view.json({"error": "the partition is moving between workers: retry shortly"}, status=503,
                         headers={"Retry-After": "2"})
    url = forward_url(owner, request.rel_url)
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")}
    headers[ROUTED_HEADER] = "1"
    try:
        async with app.http_client.get(url, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=ROUTE_TIMEOUT_S)) as resp:
            # the owner's Retry-After (a moving partition) and WWW-Authenticate (a 401) reach the client too
            passed = {k: resp.headers[k] for k in ("Retry-After", "WWW-Authenticate") if k in resp.headers}
            # always JSON, as every answer of these views is: the owner's URL comes from the group's metadata, which
            # any client of an open Kafka could set, and its HTML would be served from this worker's origin
            return view.bytes(await resp.read(), content_type="application/json", status=resp.status,
                              headers=passed)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("profile request for %r: owner %s unreachable: %r", request.path, owner, exc)
        return view.json({"error": f"the worker owning this user ({owner}) did not answer: retry shortly"},
                         status=503, headers={"Retry-After": "2"})


def forward_url(owner: Any, rel_url: Any) -> Any:
    """The owner's scheme, host and port with this request's path and query (the incoming request's scheme was
    kept: an owner announced as https://w2 was asked at http://w2:443; found by review)."""
    owner = URL(str(owner))
    # the path as it came, still encoded: a user id with a "/" (%2F) must not become two path segments; the
    # authority as the owner gave it (an IPv6 host keeps its brackets)
    return URL.build(scheme=owner.scheme, authority=owner.raw_authority, path=rel_url.raw_path,
                     query_string=rel_url.raw_query_string, encoded=True)


def dashboard_data(s: Settings, pipeline: Any, live: Any, now: float | None = None) -> dict[str, Any]:
    """LiveStats' snapshot plus what the pipeline knows now: processed, watermarks, lag (never raises for a
    missing piece: the page shows a dash)."""
    now = time.time() if now is None else now
    data: dict[str, Any] = live.snapshot(now) if live is not None else {}
    per_topic = dict(getattr(live, "lag", None) or {})
    by_partition: dict[str, int] = {}
    for parts in per_topic.values():
        for partition, behind in parts.items():
            by_partition[partition] = by_partition.get(partition, 0) + behind
    lag_updated = getattr(live, "lag_updated", None)
    data.update(
        processed=pipeline.processed,
        dropped_at_rebalance=pipeline.dropped_at_rebalance,
        watermarks={str(p): _safe(lambda e=e: e.state.watermark, None)
                    for p, e in sorted(list(pipeline.engines.items()))},
        lag={"total": sum(by_partition.values()) if lag_updated is not None else None,
             "partitions": by_partition, "per_topic": per_topic,
             "age_s": None if lag_updated is None else now - lag_updated},
        app_id=s.app_id,
    )
    return data


def _safe(read: Any, default: Any) -> Any:
    try:
        return read()
    except Exception:  # noqa: BLE001 - an engine swapped or dropped while the page reads it
        return default
