"""docker-compose.yml cannot run here (no Docker engine): keep it correct by reading it."""
import re
from dataclasses import fields
from pathlib import Path

import yaml

from tidewater.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_kraft_kafka_topics_two_workers_and_prometheus():
    services = compose()["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "prometheus"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "CONTROLLER" in env["KAFKA_LISTENERS"] and env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"  # topics are created explicitly
    assert services["topics"]["command"][:3] == ["tidewater", "topics", "create"]
    for worker in ("worker-1", "worker-2"):
        assert services[worker]["command"][:2] == ["tidewater", "worker"]
        assert services[worker]["environment"]["TIDEWATER_APP_ID"] == "tidewater"  # one consumer group


def test_compose_env_names_are_real_settings():
    known = {f.metadata["env"] for f in fields(Settings)}
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\b(TIDEWATER_[A-Z0-9_]+)", text))
    assert used and used <= known, used - known
    env = compose()["services"]["worker-1"]["environment"]
    Settings.from_env(environ={k: str(v) for k, v in env.items()})  # values parse


def test_prometheus_scrapes_both_workers_on_their_web_port():
    prom = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    port = compose()["services"]["worker-1"]["environment"]["TIDEWATER_WEB_PORT"]
    assert sorted(targets) == [f"worker-1:{port}", f"worker-2:{port}"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
