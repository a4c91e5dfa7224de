"""Throughput of ChurnScorer.score_many: sequences/s at batch 1, 32, 256 and 1024, on the CPU and on
the GPU when one is present, with the ratio to batch-of-1. The last line of stdout is one JSON object.

    python bench/churn_scoring.py [--registry var/registry] [--seconds 2] [--warmup 1] [--threads 1] [--max-len 64]

The encoder's forward pass always runs unless ``--as-served``: then the sequences go in as the worker hands
them over (the profile's ring of ``RecentEvent`` structs, through ``tidewater.scoring.RingScorer``), and a model
that kept its GLM start skips the encoder, with the same outputs (and gets the compiled summary,
``models/churn/summary_batch.py``). Uses the current model of ``<registry>/churn``; when the registry is
empty it trains a tiny model on the CDNOW sample in memory (nothing is published) so the bench always runs.
Input sequences are synthetic click/purchase histories with lengths uniform in 1..max-len (items,
categories, amounts, quantities), so truncation and padding are exercised.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_sequences(n: int, max_len: int, seed: int = 0) -> tuple[list[list[dict]], list[float]]:
    rng = np.random.default_rng(seed)
    t_end = 1.7e9
    seqs, as_of = [], []
    for _ in range(n):
        k = int(rng.integers(1, max_len + 1))
        ts = np.sort(t_end - rng.exponential(30 * 86400, k))
        seq = []
        for t in ts:
            if rng.random() < 0.7:
                seq.append({"ts": float(t), "type": "click", "item": f"i{rng.integers(5000)}",
                            "category": f"c{rng.integers(40)}"})
            else:
                seq.append({"ts": float(t), "type": "purchase", "item": f"i{rng.integers(5000)}",
                            "category": f"c{rng.integers(40)}", "amount": float(rng.gamma(2, 20)),
                            "quantity": int(rng.integers(1, 4))})
        seqs.append(seq)
        as_of.append(t_end + 3600.0)
    return seqs, as_of


def load_or_train(registry: Path):
    from models.churn.scorer import ChurnScorer
    from models.registry import Registry, RegistryEmpty

    try:
        path = Registry(registry / "churn").current_path()
        return path, None
    except RegistryEmpty:
        pass
    from models.churn.data import build_task, parse_time
    from models.churn.model import ChurnConfig
    from models.churn.train import train_model
    from models.datasets import load_cdnow

    task = build_task(load_cdnow(sample=True), parse_time("1997-10-01"), 273, seed=0)
    cfg = ChurnConfig(pretrain_epochs=1, finetune_epochs=2)
    res = train_model(task, cfg, seed=0, progress=False)
    return None, res.model


def run(scorer, seqs, as_of, batch: int, seconds: float, warmup: float) -> float:
    """Sequences/s over ``seconds`` after ``warmup`` seconds of the same calls: on a GPU each new (batch, length)
    shape pays once for kernel loading and selection, which a long-running worker has long paid."""
    n = len(seqs)

    def calls(duration: float, start: int) -> tuple[int, int, float]:
        done, i, t0 = 0, start, time.perf_counter()
        while True:
            s = (i * batch) % (n - batch + 1)
            scorer.score_many(seqs[s:s + batch], as_of[s:s + batch])
            done += batch
            i += 1
            el = time.perf_counter() - t0
            if el >= duration and i - start >= 3:
                return done, i, el

    _, end, _ = calls(warmup, 0)
    done, _, el = calls(seconds, end)
    return done / el


def mixed_batches(scorer, seqs, as_of, calls: int, most: int, seed: int = 1) -> dict:
    """Batches as the stream hands them over: random sizes 1..most from random users, so nearly every call has a
    (rows, length) shape of its own. Per-call latency p50/p99 in ms, from a scorer used for the first time."""
    rng = np.random.default_rng(seed)
    inner = getattr(scorer, "scorer", scorer)
    warm_s = time.perf_counter()
    shapes = inner.warm_up()
    warm_s = time.perf_counter() - warm_s
    ms, done = [], 0
    for _ in range(calls):
        pick = rng.choice(len(seqs), int(rng.integers(1, most + 1)), replace=False)
        t = time.perf_counter()
        scorer.score_many([seqs[i] for i in pick], [as_of[i] for i in pick])
        ms.append((time.perf_counter() - t) * 1e3)
        done += len(pick)
    return {"shape_buckets": inner.shape_buckets, "warm_up_shapes": shapes, "warm_up_s": round(warm_s, 2),
            "calls": calls, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "seq_per_s": round(done / (sum(ms) / 1e3), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", type=Path, default=Path("var/registry"))
    ap.add_argument("--seconds", type=float, default=2.0, help="time per (device, batch) point")
    ap.add_argument("--warmup", type=float, default=1.0, help="untimed calls before each point, in seconds")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batches", default="1,32,256,1024")
    ap.add_argument("--mixed-calls", type=int, default=300,
                    help="calls of random sizes 1..max batch on a fresh scorer per device (0: skip); on a GPU run "
                         "with and without shape buckets")
    ap.add_argument("--as-served", action="store_true",
                    help="score as the worker does: rings of RecentEvent structs through RingScorer; a model that kept "
                         "its GLM start skips the encoder (by default the encoder always runs, with the same "
                         "outputs, so that the transformer is measured)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from models.churn.scorer import ChurnScorer
    from tidewater.profile import RecentEvent
    from tidewater.scoring import RingScorer

    path, model = load_or_train(args.registry)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    # batch 1 first: every ratio is to it, whatever --batches lists (it was to the first listed; review)
    batches = sorted({1, *(int(b) for b in args.batches.split(","))})
    seqs, as_of = synthetic_sequences(max(4096, 2 * max(batches)), args.max_len)
    rings = [[RecentEvent(ts=e["ts"], type=e["type"], item_id=e.get("item"), category=e.get("category"),
                          amount=e.get("amount", 0.0), quantity=e.get("quantity", 0)) for e in seq] for seq in seqs]
    results, mixed = [], []
    version = None
    for dev in devices:
        scorer = ChurnScorer.load(path, device=dev, micro_batch=max(batches)) if path is not None \
            else ChurnScorer(model, version="in-memory-tiny", device=dev, micro_batch=max(batches))
        version = scorer.version
        if args.as_served:
            scorer, inputs = RingScorer(scorer), rings
        else:
            scorer.uses_encoder, inputs = True, seqs
        base = None
        for b in batches:
            rate = run(scorer, inputs, as_of, b, args.seconds, args.warmup)
            base = base or rate
            amp = getattr(scorer, "scorer", scorer).amp_dtype
            row = {"device": dev, "batch": b, "seq_per_s": round(rate, 1), "ratio_to_batch1": round(rate / base, 2),
                   "amp_dtype": str(amp).replace("torch.", "") if amp else "float32"}
            results.append(row)
            print(f"{dev:5s} batch {b:5d}: {rate:10.1f} seq/s  x{rate / base:6.2f} vs batch 1", flush=True)
        for buckets in ([True, False] if dev == "cuda" else [False]) if args.mixed_calls else []:
            fresh = ChurnScorer.load(path, device=dev, micro_batch=max(batches)) if path is not None \
                else ChurnScorer(model, version="in-memory-tiny", device=dev, micro_batch=max(batches))
            fresh.shape_buckets = buckets
            if args.as_served:
                fresh = RingScorer(fresh)
            else:
                fresh.uses_encoder = True
            row = {"device": dev, **mixed_batches(fresh, inputs, as_of, args.mixed_calls, max(batches))}
            mixed.append(row)
            print(f"{dev:5s} mixed batches 1..{max(batches)}, shape buckets {'on ' if buckets else 'off'}: "
                  f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['seq_per_s']} seq/s "
                  f"(warm-up {row['warm_up_shapes']} shapes in {row['warm_up_s']} s)", flush=True)
    out = {
        "bench": "churn_scoring",
        "model_version": version,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "max_len": args.max_len,
        "encoder_pass": getattr(scorer, "scorer", scorer).uses_encoder,
        "results": results,
        "mixed_batches": mixed,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
