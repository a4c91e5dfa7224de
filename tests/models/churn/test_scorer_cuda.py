"""The churn scorer on a CUDA GPU: what the worker runs when a GPU is present (``ChurnScorer`` picks CUDA by itself).

Skipped where torch sees no GPU (CI has none). Run them on a GPU machine with ``bench/gpu_checks.sh``, which also
times ``score_many`` there. Half precision changes the encoder's outputs a little, so the GPU is compared with the
CPU's float32 within tolerances about 20 times the error that CPU autocast in bf16 makes on the same model
(|Δp| 2.5e-4, forecast 0.2 %): loose enough for kernel choices, tight enough for a mis-ordered or mis-padded batch
(whose errors are of the order of the probabilities themselves).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.churn.scorer import ChurnScorer
from models.churn.train import save_model

from .test_churn_model import BOTH_PATHS, _sequences, scores_from_threads, served

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROB_ATOL = 5e-3  # encoder in half precision against float32 on the CPU
RATE_RTOL = 4e-2
EXACT_ATOL = 1e-5  # float32 on both (the summary-only path, or the same batches on one device)


def _on(device: str, kind: str, **kw) -> ChurnScorer:
    # ChurnScorer moves the module it is given: each device gets its own copy, so the CPU tests' model stays put
    return ChurnScorer(copy.deepcopy(served(kind)), device=device, **kw)


def _tolerances(kind: str) -> tuple[float, float]:
    return (PROB_ATOL, RATE_RTOL) if kind == "encoder" else (EXACT_ATOL, 1e-4)


def test_cuda_scorer_runs_on_the_gpu_in_native_half_precision():
    scorer = _on("cuda", "encoder")
    major, _ = torch.cuda.get_device_capability()
    assert scorer.amp_dtype == (torch.bfloat16 if major >= 8 else torch.float16)
    assert {p.device.type for p in scorer.model.parameters()} == {"cuda"}
    # batches are padded to bucketed shapes, each run once before the version serves: rows 1, 2, ..., 256 at the
    # tiny model's two length buckets (16 and 17 tokens)
    assert scorer.shape_buckets and scorer.warm_up() == 18
    # the default device is the GPU when there is one: the worker's ChurnScorer.load passes none
    assert ChurnScorer(copy.deepcopy(served("glm"))).device.type == "cuda"


@BOTH_PATHS
def test_cuda_scores_and_forecasts_match_the_cpu(kind):
    seqs, as_of = _sequences(300, seed=3)
    cpu_p, cpu_r = _on("cpu", kind).predict_many(seqs, as_of)
    gpu_p, gpu_r = _on("cuda", kind, micro_batch=64).predict_many(seqs, as_of)
    atol, rtol = _tolerances(kind)
    assert gpu_p.dtype == gpu_r.dtype == np.float64
    assert np.isfinite(gpu_p).all() and np.isfinite(gpu_r).all()
    np.testing.assert_allclose(gpu_p, cpu_p, rtol=0, atol=atol)
    np.testing.assert_allclose(gpu_r, cpu_r, rtol=rtol, atol=1e-6)
    # the comparison can fail: the users' scores differ from one another by far more than the tolerance
    assert np.abs(cpu_p - cpu_p.mean()).max() > 20 * atol


def test_fp16_path_for_gpus_without_bf16_matches_the_cpu():
    """Pre-Ampere GPUs (T4, V100) get fp16 autocast; its narrower range must not overflow in the attention mask."""
    seqs, as_of = _sequences(200, seed=4)
    expected = _on("cpu", "encoder").score_many(seqs, as_of)
    scorer = _on("cuda", "encoder", micro_batch=32)
    scorer.amp_dtype = torch.float16
    got = scorer.score_many(seqs, as_of)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=PROB_ATOL)


@BOTH_PATHS
def test_cuda_batched_scores_equal_one_by_one(kind):
    seqs, as_of = _sequences(80, seed=1)
    scorer = _on("cuda", kind, micro_batch=16)
    batched = scorer.score_many(seqs, as_of)
    single = np.array([scorer.score_one(s, t) for s, t in zip(seqs, as_of)])
    atol = _tolerances(kind)[0]
    np.testing.assert_allclose(batched, single, rtol=0, atol=atol)
    perm = np.random.default_rng(0).permutation(len(seqs))
    np.testing.assert_allclose(scorer.score_many([seqs[i] for i in perm], [as_of[i] for i in perm]),
                               batched[perm], rtol=0, atol=atol)


def test_cuda_scorer_is_thread_safe():
    seqs, as_of = _sequences(120, seed=2)
    scorer = _on("cuda", "encoder", micro_batch=8)
    expected = scorer.score_many(seqs, as_of)
    for r in scores_from_threads(scorer, seqs, as_of, 6):
        np.testing.assert_allclose(r, expected, rtol=0, atol=EXACT_ATOL)


@BOTH_PATHS
def test_a_registry_artifact_loads_onto_the_gpu_and_scores_as_served(tmp_path, kind):
    """The worker's path: ``ChurnScorer.load`` (no device given) behind ``RingScorer`` on the profile's rings, which
    summarises a batch in one pass for a model that skips its encoder."""
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    save_model(served(kind), tmp_path / "v")
    seqs, as_of = _sequences(150, seed=5)
    rings = [[RecentEvent(ts=e["ts"], type=e["type"], item_id=e.get("item"), category=e.get("category"),
                          amount=e.get("amount", 0.0), quantity=e.get("quantity", 0)) for e in s] for s in seqs]
    gpu = ChurnScorer.load(tmp_path / "v")
    assert gpu.device.type == "cuda"
    cpu = ChurnScorer.load(tmp_path / "v", device="cpu")
    atol, rtol = _tolerances(kind)
    for a, b in zip(RingScorer(gpu).predict_many(rings, as_of), RingScorer(cpu).predict_many(rings, as_of)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_repeated_scoring_does_not_grow_gpu_memory():
    seqs, as_of = _sequences(256, seed=6)
    scorer = _on("cuda", "encoder", micro_batch=64)
    scorer.score_many(seqs, as_of)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(20):
        scorer.score_many(seqs, as_of)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + (1 << 20)
