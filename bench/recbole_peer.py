"""The recommender's peer: RecBole 1.2.1's SASRec on our split, scored by our evaluation code, beside ours.

    python bench/recbole_peer.py [--epochs 200] [--stopping-step 10] [--deadline-min 35] [--skip-model]
                                 [--resume RUN_DIR] [--reuse RUN_DIR]

1. Creates `.bench/venv-recbole` if missing (python3.11 venv; torch==2.13.0 first — the CPU wheel on local
   disk — then recbole==1.2.1 --no-deps and the modules it imports, with numpy<2, pandas<3, setuptools<81;
   ray, thop and plotly are left out: only RecBole's quick_start / hyper-tuning / FLOPs code imports them).
2. Exports our time-ordered leave-one-out split of ml-100k (`models.recs.evaluation.leave_one_out`) as a
   RecBole atomic file whose timestamps are each user's positions in OUR order, plus split.json.
3. Runs `bench/peers/recbole_sasrec.py` in that venv (RecBole trains SASRec with its own Trainer; it checks
   that RecBole's split is ours, user for user, and writes the test scores of its best checkpoint).
4. Scores those SASRec scores with `models.recs.evaluation.evaluate_scorer` (the code that scores ours),
   trains and scores our model (seqlinear, the default arch) on the same split, unless --skip-model.

Progress goes to stderr; the last stdout line is one JSON object:
{"peers": {"recbole_sasrec": {ndcg@10, hit@10, mrr@10, recall@20, epochs, seconds, ...}}, "model": {...}}
Run it with `nice`: it trains on one thread (torch, OMP, MKL) for up to --deadline-min minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VENV = ROOT / ".bench" / "venv-recbole"
RUNS = ROOT / ".bench" / "recbole-runs"
PEER = ROOT / "bench" / "peers" / "recbole_sasrec.py"
DATASET = "tw_split"
# what recbole's trainer/data/model/evaluator modules import (checked with grep on recbole 1.2.1)
DEPS = ["numpy<2", "pandas<3", "setuptools<81", "scipy", "scikit-learn", "tqdm", "colorlog==4.7.2",
        "colorama==0.4.4", "pyyaml", "tensorboard", "texttable", "psutil", "tabulate"]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    ok = python.exists() and subprocess.run(
        [str(python), "-c", "import recbole, torch, numpy; assert numpy.__version__ < '2'"],
        capture_output=True).returncode == 0
    if ok:
        return python
    base = shutil.which("python3.11") or sys.executable
    steps = [[base, "-m", "venv", str(VENV)],
             [str(python), "-m", "pip", "install", "-q", "torch==2.13.0"],
             [str(python), "-m", "pip", "install", "-q", "--no-deps", "recbole==1.2.1"],
             [str(python), "-m", "pip", "install", "-q", *DEPS]]
    log(f"creating {VENV} (once): torch first, then recbole --no-deps and its imports")
    for cmd in steps:
        log("  $ " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    return python


def export_split(split, data_dir: Path) -> None:
    """All events of every user in our order; `timestamp` = position in that order (exact in float32)."""
    import numpy as np

    d = data_dir / DATASET
    d.mkdir(parents=True, exist_ok=True)
    ids = split.item_ids
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u, seq, v, t in zip(split.user_ids, split.train_seqs, split.valid, split.test):
        full = np.concatenate([seq, [v, t]]) if t >= 0 else seq
        lines += [f"{u}\t{ids[i]}\t{p}" for p, i in enumerate(full)]
    (d / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    ev = split.eval_users
    (data_dir / "split.json").write_text(json.dumps({
        "item_ids": ids, "eval_users": [split.user_ids[u] for u in ev],
        "valid": [ids[split.valid[u]] for u in ev], "test": [ids[split.test[u]] for u in ev]}))


def score_peer(split, scores_path: Path) -> tuple[dict, "np.ndarray"]:
    """Our evaluation code on the peer's exported scores (history excluded, ties by item index).

    Returns the headline metrics and the per-user ranks (for the paired comparison with ours)."""
    import numpy as np

    from models.recs.evaluation import headline, metrics_from_ranks, scorer_ranks

    scores = np.load(scores_path)
    row = {int(u): r for r, u in enumerate(split.eval_users)}
    ranks = scorer_ranks(lambda ub, hb: scores[[row[int(u)] for u in ub]], split, "test")
    m = metrics_from_ranks(ranks)
    return {**headline(m), "users": m["users"]}, ranks


def run_ours(split, texts, threads: int) -> tuple[dict, "np.ndarray"]:
    from models.recs.evaluation import headline, metrics_from_ranks, scorer_ranks
    from models.recs.pipeline import make_config, set_threads, train_for_test

    set_threads(threads)
    t0 = time.time()
    cfg = make_config("seqlinear", seed=0, threads=threads)
    model, res = train_for_test(split, texts, cfg, progress=False, log=log)
    ranks = scorer_ranks(model.score, split, "test")
    m = metrics_from_ranks(ranks)
    return {**headline(m), "users": m["users"], "arch": "seqlinear", "seconds": round(time.time() - t0, 1),
            "valid_ndcg@10": round(res.best_valid_ndcg10 or 0.0, 6)}, ranks


def main() -> None:
    ap = argparse.ArgumentParser(description="RecBole SASRec peer on our ml-100k split, beside our model")
    ap.add_argument("--interactions", default=None, help="CSV user_id,item_id,ts (default: ml-100k)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--deadline-min", type=float, default=35.0, help="SASRec training wall-clock cap (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-model", action="store_true", help="do not train/score our model")
    ap.add_argument("--reuse", default=None, help="score an earlier run directory instead of training")
    ap.add_argument("--resume", default=None,
                    help="continue training an earlier run directory from its best checkpoint (new run directory)")
    args = ap.parse_args()
    for k, v in THREAD_ENV.items():
        os.environ.setdefault(k, v)

    from models.recs.evaluation import leave_one_out, ndcg_at_10, paired_bootstrap_diff
    from models.recs.pipeline import load_log

    name, df, texts = load_log(args.interactions)
    split = leave_one_out(df)
    if args.reuse:
        run_dir = Path(args.reuse).resolve()
        seconds = None
    else:
        python = ensure_venv()
        run_dir = RUNS / time.strftime("%Y%m%d-%H%M%S")
        export_split(split, run_dir / "data")
        log(f"exported split of {name} to {run_dir / 'data'}; training SASRec in {VENV.name} "
            f"(epochs ≤ {args.epochs}, stopping_step {args.stopping_step}, deadline {args.deadline_min} min)")
        t0 = time.time()
        cmd = [str(python), str(PEER), "--data", str(run_dir / "data"), "--out", str(run_dir / "out"),
               "--epochs", str(args.epochs), "--stopping-step", str(args.stopping_step),
               "--deadline-min", str(args.deadline_min), "--threads", str(args.threads)]
        if args.resume:
            cmd += ["--resume-from", str(Path(args.resume).resolve() / "out")]
        log("  $ " + " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **THREAD_ENV})
        seconds = round(time.time() - t0, 1)
    peer = json.loads((run_dir / "out" / "result.json").read_text())
    ours_on_peer, peer_ranks = score_peer(split, run_dir / "out" / "scores.npy")
    rb = peer["recbole_test_masked"]
    agree = max(abs(rb[k] - ours_on_peer[k]) for k in rb)
    out = {"dataset": name, "users": int(len(split.eval_users)), "items": split.n_items,
           "peers": {"recbole_sasrec": {
               **ours_on_peer, "epochs": peer["epochs"], "best_epoch": peer["best_epoch"],
               "stopped": peer["stopped"], "seconds": seconds if seconds is not None else peer["train_seconds"],
               "train_seconds": peer["train_seconds"], "best_valid_ndcg@10": peer["best_valid_ndcg@10"],
               "recbole_test_masked": rb, "max_abs_diff_vs_recbole_evaluator": round(agree, 6),
               "recbole_test_stock_unmasked": peer["recbole_test_stock_unmasked"],
               "threads": peer["threads"], "recbole": peer["recbole"], "config": peer["config"],
               "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)}}}
    if not args.skip_model:
        log("training our model (seqlinear) on the same split")
        out["model"], our_ranks = run_ours(split, texts, args.threads)
        p = out["peers"]["recbole_sasrec"]
        out["model_vs_peer"] = {k: round(out["model"][k] / p[k], 4) if p[k] else None
                                for k in ("ndcg@10", "hit@10", "mrr@10", "recall@20")}
        # same users, same targets: resample users to see whether the gap is more than noise
        out["model_minus_peer_ndcg@10"] = paired_bootstrap_diff(ndcg_at_10(our_ranks), ndcg_at_10(peer_ranks))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
