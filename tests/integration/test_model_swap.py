"""The churn model inside the stream: versions from the registry stamped on outputs, hot swap mid-replay."""
import json
import time

import pytest

from tests.integration.conftest import synthetic_shop, wait_for_models, wait_for_profiles, write_jsonl
from tests.integration.model_registry import publish_tiny_churn as publish_tiny_model

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def churn_scores(deployment) -> dict[tuple[int, int], tuple[str, float]]:
    """(partition, offset) -> (model_version, score) of every churn score so far."""
    return {(p, o): (json.loads(v)["model_version"], json.loads(v)["score"])
            for p, o, _, v in deployment.read(deployment.settings.topic_churn_scores)}


def test_model_version_from_registry_and_hot_swap_without_dropping_events(deployment, tmp_path):
    registry = tmp_path / "registry"
    # the two versions are told apart by their scores too (near 0 / near 1), not only by the version stamped on
    # them: a worker stamping the new version while scoring with the old one fails
    first = publish_tiny_model(registry, seed=1, bias=-20.0)
    deployment.env.update(TIDEWATER_REGISTRY_DIR=str(registry), TIDEWATER_MODEL_POLL_S="0.5")
    lines, expected = synthetic_shop(n_users=20, per_user=40)
    half = len(lines) // 2
    worker = deployment.start_worker()
    worker.wait_ready()
    deployment.replay_file(write_jsonl(tmp_path / "a.jsonl", lines[:half]))
    deadline = time.monotonic() + 120
    while worker.stats()["processed"] < half and time.monotonic() < deadline:
        time.sleep(0.3)
    before = churn_scores(deployment)
    assert before and {v for v, _ in before.values()} == {first}  # the registry's model, not the heuristic
    assert all(score < 0.01 for _, score in before.values())
    second = publish_tiny_model(registry, seed=2, bias=20.0)
    wait_for_models(worker, {"churn": second})  # swapped between two batches, without a restart
    deployment.replay_file(write_jsonl(tmp_path / "b.jsonl", lines[half:]))
    assert wait_for_profiles(worker, expected) == expected  # no event dropped during the swap
    after = {k: v for k, v in churn_scores(deployment).items() if k not in before}
    assert after and {v for v, _ in after.values()} == {second}
    assert all(score > 0.99 for _, score in after.values())
