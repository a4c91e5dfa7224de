"""Issue 5's end-to-end checks: real data (CDNOW + ml-100k) through a real broker, with the churn model and the
recommender from the registry: versions on every output, a swap of both mid-replay with nothing dropped, and
byte-identical outputs from two replays with the same models."""
import json
import time

import pytest

from models.registry import Registry
from tests.integration.conftest import Deployment, wait_for_models, write_jsonl
from tests.integration.model_registry import publish_tiny_churn, publish_tiny_recs

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def real_events(cdnow: int, movielens: int) -> list[bytes]:
    """The first events of the CDNOW sample and of ml-100k, as JSON lines in event-time order."""
    from itertools import islice

    from tidewater.events import encode_event
    from tidewater.sources import cdnow_events, ml100k_events

    events = list(islice(cdnow_events(sample=True), cdnow)) + list(islice(ml100k_events(), movielens))
    events.sort(key=lambda e: (e.ts, e.event_id))
    return [encode_event(e) for e in events]


def ml100k_item_ids() -> list[str]:
    from models.datasets import load_ml100k

    return sorted(load_ml100k().items["item_id"].astype(str))


def applied(worker) -> int:
    counters = worker.stats()["counters"]
    return sum(n for key, n in counters.items() if key.startswith("applied:"))


def wait_processed(worker, n: int, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.stats()["processed"] < n and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.stats()["processed"] >= n, worker.stats()


def outputs(d: Deployment) -> dict[str, list[dict]]:
    s = d.settings
    return {name: [json.loads(v) for _, _, _, v in d.read(topic)]
            for name, topic in (("churn", s.topic_churn_scores), ("recs", s.topic_recommendations),
                                ("offers", s.topic_offers))}


def test_real_data_with_registry_models_and_a_swap_of_both_mid_replay(deployment, tmp_path):
    registry = tmp_path / "registry"
    items = ml100k_item_ids()
    churn_v1, recs_v1 = publish_tiny_churn(registry, seed=1), publish_tiny_recs(registry, items, seed=1)
    deployment.env.update(TIDEWATER_REGISTRY_DIR=str(registry), TIDEWATER_MODEL_POLL_S="0.5",
                          TIDEWATER_INACTIVITY_GAP_S=str(30 * 86400), TIDEWATER_CHURN_THRESHOLD="0.0")
    lines = real_events(cdnow=3000, movielens=6000)
    half = len(lines) // 2
    worker = deployment.start_worker()
    worker.wait_ready()
    deployment.replay_file(write_jsonl(tmp_path / "a.jsonl", lines[:half]))
    wait_processed(worker, half)
    before = outputs(deployment)
    assert before["churn"] and before["recs"] and before["offers"]
    assert {o["model_version"] for o in before["churn"] + before["offers"]} == {churn_v1}
    assert {(r["model_version"], r["index_version"]) for r in before["recs"]} == {(recs_v1, recs_v1)}
    assert {(o["recs_model_version"], o["recs_index_version"]) for o in before["offers"]} == {(recs_v1, recs_v1)}
    assert all(r["segment"] is not None for r in before["recs"] if r["user_id"].startswith("m"))
    assert {r["segment_model_version"] for r in before["recs"] + before["churn"] + before["offers"]
            if r["segment"] is not None} == {recs_v1}

    # new versions of both models, and a newer index for the new recommender
    churn_v2, recs_v2 = publish_tiny_churn(registry, seed=2), publish_tiny_recs(registry, items, seed=2)
    from models.recs.pipeline import build_index

    index_v1, info = build_index(registry, kind="flat")
    assert info["model_version"] == recs_v2
    wait_for_models(worker, {"churn": churn_v2, "recs": recs_v2, "index": f"{recs_v2}/{index_v1}"})
    deployment.replay_file(write_jsonl(tmp_path / "b.jsonl", lines[half:]))
    wait_processed(worker, len(lines))
    assert applied(worker) == len(lines)  # nothing dropped during the swap, nothing applied twice
    after = outputs(deployment)
    old_ids = {name: {r["event_id"] for r in rows} for name, rows in before.items()}
    new = {name: [r for r in rows if r["event_id"] not in old_ids[name]] for name, rows in after.items()}
    assert new["churn"] and new["recs"]
    assert {o["model_version"] for o in new["churn"] + new["offers"]} == {churn_v2}
    assert {(r["model_version"], r["index_version"]) for r in new["recs"]} == {(recs_v2, f"{recs_v2}/{index_v1}")}
    assert {(o["recs_model_version"], o["recs_index_version"]) for o in new["offers"]} <= {
        (recs_v2, f"{recs_v2}/{index_v1}")}
    assert Registry(registry / "recs").current_version() == recs_v2
    assert all(len(r["items"]) == 10 and r["items"][0]["score"] >= r["items"][-1]["score"] for r in after["recs"])


def test_replays_with_the_real_models_are_byte_identical(broker, tmp_path):
    registry = tmp_path / "registry"
    publish_tiny_churn(registry, seed=3)
    publish_tiny_recs(registry, ml100k_item_ids(), seed=3)
    path = write_jsonl(tmp_path / "in.jsonl", real_events(cdnow=2000, movielens=3000))
    n = sum(1 for _ in path.open("rb"))
    runs = []
    for run in range(2):
        (tmp_path / f"run{run}").mkdir()
        d = Deployment(broker, tmp_path / f"run{run}")
        d.env.update(TIDEWATER_REGISTRY_DIR=str(registry), TIDEWATER_SOURCE_IDLE_MS="4000",
                     TIDEWATER_CHURN_THRESHOLD="0.0")
        try:
            d.replay_file(path)  # the whole input is there before the worker starts
            w = d.start_worker()
            w.wait_ready()
            wait_processed(w, n)
            s = d.settings
            runs.append([[(p, k, v) for p, _, k, v in d.read(t)]
                         for t in (s.topic_churn_scores, s.topic_recommendations, s.topic_offers)])
        finally:
            d.stop()
    first, second = runs
    assert all(first), "every output topic has records"
    assert first == second
