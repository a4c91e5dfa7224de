"""Integration fixtures: a real embedded Kafka-protocol broker and real worker processes."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from infra.broker import EmbeddedBroker, free_port
from streams.broker_quirks import QUIRKS_BY_BROKER
from tidewater.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def embedded_broker(kind: str, log_name: str) -> Iterator[EmbeddedBroker]:
    """A started embedded broker logging to var/``log_name``, stopped on exit."""
    b = EmbeddedBroker(kind=kind, log_path=str(REPO / "var" / log_name))
    (REPO / "var").mkdir(exist_ok=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def broker():
    kind = os.environ.get("TIDEWATER_TEST_BROKER", "tansu")
    with embedded_broker(kind, f"test-broker-{kind}.log") as b:
        yield b


@dataclass
class Deployment:
    broker: EmbeddedBroker
    tmp: Path
    partitions: int = 4
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    workers: list = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.prefix
        self.env = dict(os.environ, TIDEWATER_BOOTSTRAP_SERVERS=self.broker.bootstrap_servers,
                        TIDEWATER_APP_ID=p, TIDEWATER_PARTITIONS=str(self.partitions),
                        TIDEWATER_TOPIC_CLICKS=f"{p}-clicks", TIDEWATER_TOPIC_PURCHASES=f"{p}-purchases",
                        TIDEWATER_TOPIC_CHURN_SCORES=f"{p}-churn", TIDEWATER_TOPIC_RECOMMENDATIONS=f"{p}-recs",
                        TIDEWATER_TOPIC_OFFERS=f"{p}-offers", TIDEWATER_TOPIC_DEAD_LETTER=f"{p}-dlq",
                        TIDEWATER_TOPIC_ERASURES=f"{p}-erasures",
                        TIDEWATER_SESSION_TIMEOUT_S="6", TIDEWATER_HEARTBEAT_INTERVAL_S="0.5",
                        TIDEWATER_SOURCE_IDLE_MS="300", TIDEWATER_MAX_EVENT_BYTES="2048",
                        TIDEWATER_INACTIVITY_GAP_S=str(14 * 86400), PYTHONUNBUFFERED="1",
                        TIDEWATER_REGISTRY_DIR=str(self.tmp / "registry"))  # empty: the placeholder scores
        if self.broker.kind in QUIRKS_BY_BROKER:  # Tansu's high watermark, noida's empty fetches
            self.env["TIDEWATER_BROKER_QUIRKS"] = QUIRKS_BY_BROKER[self.broker.kind]
        self.settings = Settings.from_env(environ=self.env)
        from infra.topics import create_topics_sync

        create_topics_sync(self.settings)

    def start_worker(self, name: str = "w1") -> "Worker":
        port = free_port()
        env = dict(self.env, TIDEWATER_WEB_PORT=str(port), TIDEWATER_DATA_DIR=str(self.tmp / f"state-{name}"))
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "tidewater.cli", "worker", "--loglevel", "info"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        worker = Worker(proc, port, self.tmp / f"{name}.log")
        self.workers.append(worker)
        return worker

    def replay_file(self, path: Path, close: bool = False) -> dict:
        from streams.replay import replay

        return asyncio.run(replay(self.settings, [str(path)], progress=False, close=close))

    def read(self, topic: str) -> list:
        from streams.replay import read_topic

        return asyncio.run(read_topic(self.settings, topic, idle_s=1.0))

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


@dataclass
class Worker:
    proc: subprocess.Popen
    port: int
    log: Path

    def get(self, path: str, attempts: int = 3):
        """GET a JSON path; None for a 404. A reply that times out or a refused connection is tried again while
        the worker runs: one slow reply (a backlog batch on the event loop, a starved CPU) is not a test failure
        (found by review). A 503 with Retry-After (the owner not known yet, the partitions being restored) is
        asked again for up to a minute."""
        deadline = time.monotonic() + 60
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 503 and exc.headers.get("Retry-After") and time.monotonic() < deadline \
                        and self.proc.poll() is None:
                    time.sleep(0.5)
                    continue
                raise
            except OSError:  # URLError, a timeout, a reset
                attempt += 1
                if attempt >= attempts or self.proc.poll() is not None:
                    raise
                time.sleep(0.5)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.get("/health")["status"] == "ok":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def stats(self) -> dict:
        return self.get("/stats")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def deployment(broker, tmp_path):
    d = Deployment(broker, tmp_path)
    yield d
    d.stop()


def synthetic_shop(n_users: int = 30, per_user: int = 40, bad_every: int = 0) -> tuple[list[bytes], dict[str, int]]:
    """Deterministic clicks + purchases of n users over ~60 days; returns JSON lines and events per user."""
    lines: list[tuple[float, bytes]] = []
    expected: dict[str, int] = {}
    for u in range(n_users):
        user = f"user-{u}"
        for i in range(per_user):
            ts = 1_600_000_000 + u * 977 + i * (86400 * 60 // per_user) * (1 + u % 3) // 2
            if i % 4 == 3:
                event = {"type": "purchase", "event_id": f"{user}-{i}", "user_id": user, "ts": ts,
                         "amount": 10 + (u * i) % 90, "quantity": 1 + i % 3, "item_id": f"item-{(u + i) % 25}"}
            else:
                event = {"type": "click", "event_id": f"{user}-{i}", "user_id": user, "ts": ts,
                         "item_id": f"item-{(u * 7 + i) % 25}", "category": f"cat-{i % 5}"}
            lines.append((ts, json.dumps(event).encode()))
            expected[user] = expected.get(user, 0) + 1
    lines.sort(key=lambda x: x[0])
    return [line for _, line in lines], expected


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def wait_for_profiles(worker_or_workers, expected: dict[str, int], timeout: float = 180.0) -> dict[str, int]:
    """Poll GET /users/{id}/profile (routed to the owner) until every count matches or time runs out."""
    workers = worker_or_workers if isinstance(worker_or_workers, list) else [worker_or_workers]
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        live = [w for w in workers if w.proc.poll() is None]
        seen.update(_read_counts(live, [user for user, n in expected.items() if seen.get(user) != n]))
        if seen == expected:
            # every profile once more: a count kept from when it first matched hid an event applied twice after
            # it (found by review)
            return {**seen, **_read_counts([w for w in workers if w.proc.poll() is None], expected)}
        time.sleep(1.0)
    return seen


def _read_counts(workers: list, users) -> dict[str, int]:
    """{user: events in their profile} of the ``users`` some worker answered for (routed to the owner)."""
    counts: dict[str, int] = {}
    for user in users:
        for w in workers:
            try:
                profile = w.get(f"/users/{user}/profile")
            except (OSError, ValueError):
                continue
            if profile is not None:
                counts[user] = profile["n_events"]
                break
    return counts


def offline_output_ids(settings, lines: list[bytes]) -> dict[str, set[str]]:
    """The output event ids of an uninterrupted run: the pure engine over each partition's records as `replay`
    routes the lines (key = user_id, the producer's partitioner, the topic of the event's type), by output topic.
    Outputs are deterministic, so a worker's outputs must include these whatever happened to it (at least once)."""
    from aiokafka.partitioner import DefaultPartitioner

    from tidewater.engine import EngineConfig, PartitionEngine, Record, run_to_completion
    from tidewater.sources import topic_kind

    choose, parts = DefaultPartitioner(), list(range(settings.partitions))
    topics = {"click": settings.topic_clicks, "purchase": settings.topic_purchases}
    by_partition: dict[int, list[Record]] = {}
    offsets: dict[tuple[str, int], int] = {}
    for line in lines:
        key = json.loads(line)["user_id"].encode()
        partition, topic = choose(key, parts, parts), topics[topic_kind(line)]
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        by_partition.setdefault(partition, []).append(Record(topic, partition, offset, key, line))
    config = EngineConfig.from_settings(settings)
    out: dict[str, set[str]] = {}
    for partition, records in sorted(by_partition.items()):
        result = run_to_completion(PartitionEngine(partition, config, {}), records)
        for emit in result.outputs:
            out.setdefault(emit.topic, set()).add(json.loads(emit.value)["event_id"])
    return out


def model_in_use(worker, kind: str) -> str | None:
    """The version of ``kind`` (churn, recs, index) the worker serves now: its ``tidewater_model_info`` series."""
    import re

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        found = re.search(rf'tidewater_model_info\{{kind="{kind}",version="([^"]+)"\}} 1', resp.read().decode())
    return found.group(1) if found else None


def metric(worker, series: str) -> float | None:
    """One series of the worker's ``/metrics``, written as it is exposed (name and labels); None: not there."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
    return None


def consumer_lag(worker, topic: str, partition: int) -> float | None:
    return metric(worker, f'tidewater_consumer_lag{{partition="{partition}",topic="{topic}"}}')


def wait_for_models(worker, wanted: dict[str, str], timeout: float = 60.0) -> None:
    """Until the worker serves ``wanted`` (kind -> version): a hot reload, observed instead of slept for."""
    deadline = time.monotonic() + timeout
    while any(model_in_use(worker, k) != v for k, v in wanted.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {k: model_in_use(worker, k) for k in wanted} == wanted
