"""HTTP views served by each worker (Faust web): ingest, profiles, health, metrics, stats, dashboard."""
from __future__ import annotations

import asyncio
import hmac
import time
from importlib import resources
from typing import Any

import faust
import msgspec
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import lag, metrics
from tidewater.events import Clock, Rejected, decode_event, encode_event
from tidewater.profile import decode_profile, profile_to_json
from tidewater.settings import Settings
from tidewater.sources import topic_kind


def register(app: faust.App, s: Settings, pipeline: Any, profiles: Any) -> None:
    topics = {"click": app.topic(s.topic_clicks, key_serializer="raw", value_serializer="raw"),
              "purchase": app.topic(s.topic_purchases, key_serializer="raw", value_serializer="raw")}

    @app.page("/events")
    class Ingest(View):
        """POST a JSON array of events (or one object). Bearer token required; each event validated."""

        async def post(self, request: Request) -> Response:
            token = s.ingest_token.reveal()
            if not token:
                return self.json({"error": "ingest disabled: set TIDEWATER_INGEST_TOKEN"}, status=503)
            auth = request.headers.get("Authorization", "")  # aiohttp keeps undecodable bytes as surrogates
            if not hmac.compare_digest(auth.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()):
                return self.json({"error": "missing or wrong bearer token"}, status=401)
            def too_big() -> Response:
                return self.json({"error": f"body over {s.max_request_bytes} bytes"}, status=413)

            if request.content_length is not None and request.content_length > s.max_request_bytes:
                return too_big()
            chunks, size = [], 0  # read here, not with request.read(): aiohttp's own cap is 1 MiB whatever is set
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > s.max_request_bytes:
                    return too_big()
                chunks.append(chunk)
            try:
                items = msgspec.json.decode(b"".join(chunks))
            except msgspec.DecodeError as exc:
                return self.json({"error": f"malformed JSON: {exc}"}, status=400)
            except RecursionError:
                return self.json({"error": "malformed JSON: nested too deeply"}, status=400)
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list) or not items:
                return self.json({"error": "expected a JSON object or a non-empty array of events"}, status=400)
            decoded = []
            errors = []
            for i, item in enumerate(items):
                event = decode_event(msgspec.json.encode(item), max_bytes=s.max_event_bytes)
                if isinstance(event, Rejected):
                    errors.append({"index": i, "reason": event.reason, "detail": event.detail})
                else:
                    decoded.append(event)
            if errors:  # all or nothing: the web tier fixes the batch and resends it
                return self.json({"error": "invalid events", "rejected": errors}, status=422)
            try:  # 202 means Kafka has every event, not that the producer queued them
                sent = []
                for event in decoded:
                    if isinstance(event, Clock):  # the partition's time, for every partition
                        sent.extend([await topics["click"].send(value=encode_event(event), partition=partition)
                                     for partition in range(s.partitions)])  # = the topic's (checked at start)
                    else:  # erasure requests go with the clicks
                        sent.append(await topics[topic_kind(event)].send(key=event.user_id.encode(),
                                                                         value=encode_event(event)))
                await asyncio.gather(*sent)
            except Exception as exc:  # noqa: BLE001 - any delivery failure: the client must resend
                return self.json({"error": f"not every event reached Kafka ({exc!r}); resend the batch: an event "
                                           "already stored is skipped by its event_id (among the user's last 16)"},
                                 status=503)
            return self.json({"accepted": len(decoded)}, status=202)

    @app.page("/users/{user_id}/profile")
    class UserProfile(View):
        @app.table_route(table=profiles, match_info="user_id")
        async def get(self, request: Request, user_id: str) -> Response:
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
            return self.json({"status": "ok" if pipeline.ready else "starting", "partitions": assigned,
                              "processed": pipeline.processed, "dropped_at_rebalance": pipeline.dropped_at_rebalance,
                              "models": {"churn": pipeline.churn_slot.scorer.version,
                                         "recs": pipeline.recs_slot.recommender.version,
                                         "index": pipeline.recs_slot.recommender.index_version}},
                             status=200 if pipeline.ready else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            counters: dict[str, int] = {}
            for engine in list(pipeline.engines.values()):  # copies: the engine thread may add keys meanwhile
                for (name, label), n in list(getattr(engine, "counters", {}).items()):
                    counters[f"{name}:{label}"] = counters.get(f"{name}:{label}", 0) + n
            return self.json({"processed": pipeline.processed, "acks": pipeline.throughput.as_dict(),
                              "counters": counters,
                              "watermarks": {p: getattr(e.state, "watermark", None) for p, e in pipeline.engines.items()}})

    # --- the dashboard: one self-contained page polling dashboard.json ---------------------------------
    live = getattr(pipeline, "live", None)  # streams.live_stats.LiveStats, fed by Pipeline._flush
    lag.install(app, s.input_topics, sink=live)  # tidewater_consumer_lag, also shown on the page
    page = resources.files("streams").joinpath("dashboard.html").read_text(encoding="utf-8")

    @app.page("/dashboard")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.html(page, headers={"Cache-Control": "no-store"})

    @app.page("/dashboard.json")
    class DashboardData(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(msgspec.json.encode(dashboard_data(s, pipeline, live)),
                              content_type="application/json", headers={"Cache-Control": "no-store"})


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
