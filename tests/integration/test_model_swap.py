"""The churn model inside the stream: versions from the registry stamped on outputs, hot swap mid-replay."""
import json
import time

import pytest

from tests.integration.conftest import synthetic_shop, wait_for_profiles, write_jsonl
from tests.integration.model_registry import publish_tiny_churn as publish_tiny_model

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def churn_versions(deployment) -> dict[tuple[int, int], str]:
    """(partition, offset) -> model_version of every churn score so far."""
    return {(p, o): json.loads(v)["model_version"] for p, o, _, v in deployment.read(deployment.settings.topic_churn_scores)}


def test_model_version_from_registry_and_hot_swap_without_dropping_events(deployment, tmp_path):
    registry = tmp_path / "registry"
    first = publish_tiny_model(registry, seed=1)
    deployment.env.update(TIDEWATER_REGISTRY_DIR=str(registry), TIDEWATER_MODEL_POLL_S="0.5")
    lines, expected = synthetic_shop(n_users=20, per_user=40)
    half = len(lines) // 2
    worker = deployment.start_worker()
    worker.wait_ready()
    deployment.replay_file(write_jsonl(tmp_path / "a.jsonl", lines[:half]))
    deadline = time.monotonic() + 120
    while worker.stats()["processed"] < half and time.monotonic() < deadline:
        time.sleep(0.3)
    before = churn_versions(deployment)
    assert before and set(before.values()) == {first}  # the registry's model, not the heuristic
    second = publish_tiny_model(registry, seed=2)
    time.sleep(3)  # > poll interval: the worker swaps between two batches
    deployment.replay_file(write_jsonl(tmp_path / "b.jsonl", lines[half:]))
    assert wait_for_profiles(worker, expected) == expected  # no event dropped during the swap
    after = {k: v for k, v in churn_versions(deployment).items() if k not in before}
    assert after and set(after.values()) == {second}
