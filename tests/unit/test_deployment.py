"""docker-compose.yml cannot run here (no Docker engine): keep it correct by reading it."""
import re
from dataclasses import fields
from pathlib import Path

import yaml

from tidewater.settings import Secret, Settings

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
    # the cluster id is pinned (an image upgrade must not change the id the data volume was formatted with), and
    # overridable; a KRaft id is 22 base64url characters
    default_id = re.fullmatch(r"\$\{KAFKA_CLUSTER_ID:-([A-Za-z0-9_-]{22})\}", env["CLUSTER_ID"])
    assert default_id, env["CLUSTER_ID"]
    assert services["topics"]["command"][:3] == ["tidewater", "topics", "create"]
    for worker in ("worker-1", "worker-2"):
        assert services[worker]["command"][:2] == ["tidewater", "worker"]
        assert services[worker]["environment"]["TIDEWATER_APP_ID"] == "tidewater"  # one consumer group
        # each announces its own reachable URL: with 0.0.0.0 for both, profile routing went to the wrong worker
        port = services[worker]["environment"]["TIDEWATER_WEB_PORT"]
        assert services[worker]["environment"]["TIDEWATER_WEB_CANONICAL_URL"] == f"http://{worker}:{port}"
        assert services[worker]["hostname"] == worker
    # Kafka writes where its volume is mounted, and the host reaches it through a listener it advertises
    assert f"kafka-data:{env['KAFKA_LOG_DIRS']}" in kafka["volumes"]
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    # Kafka refuses to start when a name is advertised but not listened on, or has no protocol
    assert set(advertised) <= set(listeners) <= set(protocols), (advertised, listeners, protocols)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised and "CONTROLLER" in listeners
    assert "CONTROLLER" not in advertised  # a controller listener is not advertised to clients
    voters_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1]
    assert voters_port == listeners["CONTROLLER"][1]  # the broker reaches its controller there
    # the external listener is published on the host's loopback only (PLAINTEXT, no authentication)
    host, port = advertised["EXTERNAL"]
    assert host == "localhost" and listeners["EXTERNAL"][1] == port
    assert kafka["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert all(p.startswith("127.0.0.1:") for p in services["prometheus"]["ports"])
    # the workers bootstrap through the listener advertised inside the network, not the host's one
    inner_host, inner_port = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert services["worker-1"]["environment"]["TIDEWATER_BOOTSTRAP_SERVERS"] == f"{inner_host}:{inner_port}"
    for worker in ("worker-1", "worker-2"):  # RocksDB state on the worker's volume: kept across restarts
        state_dir = services[worker]["environment"]["TIDEWATER_DATA_DIR"]
        assert any(v.startswith(f"{worker}-state:") and v.split(":")[1] == state_dir
                   for v in services[worker]["volumes"])


def _listeners(text: str) -> dict[str, tuple[str, str]]:
    """``NAME://host:port,...`` as {name: (host, port)}; an empty host (all interfaces) stays empty."""
    out = {}
    for item in text.split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        out[name] = (host, port)
    return out


def test_compose_env_names_are_real_settings():
    known = {f.metadata["env"] for f in fields(Settings)}
    known |= {f.metadata["env"] + "_FILE" for f in fields(Settings) if isinstance(f.default, Secret)}
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\b(TIDEWATER_[A-Z0-9_]+)", text))
    assert used and used <= known, used - known
    env = compose()["services"]["worker-1"]["environment"]
    # values parse, as compose passes them from an empty host environment (${VAR:-default} gives the default)
    interpolated = {k: re.sub(r"^\$\{[A-Z0-9_]+:-(.*)\}$", r"\1", str(v)) for k, v in env.items()}
    Settings.from_env(environ=interpolated)


def test_prometheus_scrapes_both_workers_on_their_web_port():
    prom = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    port = compose()["services"]["worker-1"]["environment"]["TIDEWATER_WEB_PORT"]
    assert sorted(targets) == [f"worker-1:{port}", f"worker-2:{port}"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"


def _exported_series() -> set[str]:
    """The series names the worker's /metrics exposes (counters with _total, histograms with their parts)."""
    from streams import metrics

    names = set()
    for family in metrics.REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names | {"tidewater_batch_seconds_bucket", "tidewater_scoring_seconds_bucket"}  # before any observation


def test_alert_rules_are_loaded_mounted_valid_promql_and_name_only_exported_series():
    import promql_parser

    prom = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    mounted = compose()["services"]["prometheus"]["volumes"]
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./infra/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounted
    rules = [rule for group in yaml.safe_load((ROOT / "infra/prometheus/alerts.yml").read_text())["groups"]
             for rule in group["rules"]]
    exported = _exported_series()
    assert len(rules) >= 6
    for rule in rules:
        assert rule["alert"].startswith("Tidewater") and rule["labels"]["severity"] in ("page", "warn")
        assert rule["annotations"]["summary"], rule["alert"]
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        named = set(re.findall(r"\b(tidewater_[a-z_]+)", rule["expr"]))
        assert named <= exported, (rule["alert"], named - exported)
    runbook = (ROOT / "docs/operations.md").read_text()
    for rule in rules:  # every alert has its runbook section, linked from the rule
        assert f"\n### {rule['alert']}\n" in runbook, rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{rule['alert'].lower()}"
    # a stall is per worker: summed over the cluster, one hung worker was hidden by the others' rate (review)
    stalled = promql_parser.parse(next(r["expr"] for r in rules if r["alert"] == "TidewaterStalled"))
    assert [list(side.modifier.labels) for side in (stalled.lhs.lhs, stalled.rhs.lhs)] == [["instance"]] * 2
    # progress is any record acked: applied events alone paged on a worker keeping up with bad input (review)
    assert "rate(tidewater_records_done_total[5m])" in next(r["expr"] for r in rules if r["alert"] == "TidewaterStalled")
    alerted = " ".join(rule["expr"] for rule in rules)
    for must in ("tidewater_consumer_lag", "tidewater_dead_letters_total", "tidewater_scoring_errors_total",
                 "tidewater_model_load_failures_total", "up{"):
        assert must in alerted, must


def _models_script() -> str:
    command = compose()["services"]["models"]["command"]
    assert command[:2] == ["sh", "-c"]
    return command[2].replace("$$", "$")  # compose's escape for a literal $


def test_workers_wait_for_the_models_and_share_their_registry():
    services = compose()["services"]
    registry = services["worker-1"]["environment"]["TIDEWATER_REGISTRY_DIR"]
    assert f"R={registry};" in _models_script()
    assert f"registry:{registry}" in services["models"]["volumes"]
    for name in ("worker-1", "worker-2"):  # read-only: workers load, the models service publishes (security review)
        assert f"registry:{registry}:ro" in services[name]["volumes"], name
    # `docker compose run --rm models tidewater models use ...` (docs/operations.md) acts on the workers' brokers
    # and registry: the service had no environment, so it read ./var/registry and 127.0.0.1:9092
    for key in ("TIDEWATER_REGISTRY_DIR", "TIDEWATER_BOOTSTRAP_SERVERS"):
        assert services["models"]["environment"][key] == services["worker-1"]["environment"][key], key
    for worker in ("worker-1", "worker-2"):
        assert services[worker]["depends_on"]["models"] == {"condition": "service_completed_successfully"}
        probe = " ".join(services[worker]["healthcheck"]["test"])
        port = services[worker]["environment"]["TIDEWATER_WEB_PORT"]
        assert f"http://127.0.0.1:{port}/health" in probe and "'ok'" in probe


def test_models_service_trains_each_missing_model_once(tmp_path):
    """Run the service's shell script with a stand-in `tidewater` that records its arguments and publishes."""
    import os
    import subprocess

    registry = tmp_path / "registry"
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "tidewater"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n'
                    'for a in "$@"; do last="$a"; done\nmkdir -p "$last/$2" && touch "$last/$2/current"\n')
    fake.chmod(0o755)
    script = _models_script().replace(compose()["services"]["worker-1"]["environment"]["TIDEWATER_REGISTRY_DIR"],
                                      str(registry))
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", CALLS=str(calls))
    for _ in range(2):  # the second start finds both models current and trains nothing
        subprocess.run(["sh", "-c", script], env=env, check=True, timeout=30)
    lines = calls.read_text().splitlines()
    assert lines == [f"train churn --no-progress --registry {registry}", f"train recs --registry {registry}"]
    (registry / "recs" / "current").unlink()
    subprocess.run(["sh", "-c", script], env=env, check=True, timeout=30)
    assert calls.read_text().splitlines()[2:] == [f"train recs --registry {registry}"]


def test_models_service_options_are_real_cli_options():
    from typer.testing import CliRunner

    from tidewater.cli import app

    for kind, options in (("churn", ["--no-progress", "--registry"]), ("recs", ["--registry"])):
        assert f"train {kind}" in _models_script()
        out = CliRunner().invoke(app, ["train", kind, "--help"], terminal_width=200).output
        for option in options:
            assert option in out, (kind, option)


def test_the_clock_service_runs_the_clock_command_with_real_options():
    from typer.testing import CliRunner

    from tidewater.cli import app

    service = compose()["services"]["clock"]
    command = service["command"]
    assert command[:2] == ["tidewater", "clock"] and "topics" in service["depends_on"]
    assert service["profiles"] == ["live"]  # not during a replay of older data, whose events it would make late
    assert service["init"] is True  # as PID 1 without one, it ignored SIGTERM and every stop waited to kill it
    out = CliRunner().invoke(app, ["clock", "--help"], terminal_width=200).output
    for option in (arg for arg in command[2:] if arg.startswith("--")):
        assert option in out, option


def test_regression_the_image_is_built_once_from_a_small_context_and_runs_the_baselines():
    """No .dockerignore sent the virtualenvs (2 GB) as build context to each of five services' own image, and
    python:3.11-slim lacks the OpenMP runtime that LightGBM and implicit link against (found by review)."""
    built = {name: s for name, s in compose()["services"].items() if "build" in s}
    assert len(built) >= 4 and {s["image"] for s in built.values()} == {"tidewater:local"}
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".bench", "var", ".git"} <= ignored
    copied = re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert copied and not any(path.rstrip("/") in ignored for path in copied)
    assert "libgomp1" in (ROOT / "Dockerfile").read_text()


def test_regression_the_build_stage_installs_from_a_directory_of_its_own_and_the_image_runs_as_a_user():
    """Without a WORKDIR the build stage's `pip install .` ran from /, where setuptools' package discovery follows
    /proc's links back into / without end: the image never built (found by review). The workers ran as root."""
    build, run = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    first_copy = build.index("\nCOPY ")
    assert re.search(r"^WORKDIR /\w+", build[:first_copy], re.M)
    assert re.search(r"^USER (?!root)\w+", run, re.M)
    assert "/var/lib/tidewater" in run  # the state directory exists, owned by that user, for its volume


def test_the_broker_and_prometheus_come_back_and_workers_get_time_to_stop():
    services = compose()["services"]
    assert services["kafka"]["restart"] == services["prometheus"]["restart"] == "unless-stopped"
    workers = [s for name, s in services.items() if name.startswith("worker")]
    assert workers and all(s["stop_grace_period"] == "60s" for s in workers)
    assert any(v.endswith(":/prometheus") for v in services["prometheus"]["volumes"])
