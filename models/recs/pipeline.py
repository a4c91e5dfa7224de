"""End-to-end jobs behind the CLI: load a log, train/publish, evaluate model + baselines, report."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from models.logs import read_log_csv
from models.recs.evaluation import (
    K_MAX, Split, evaluate_scorer, headline, leave_one_out, metrics_from_ranks, normalize_log,
)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def load_log(interactions: str | Path | None, log: Log = _quiet) -> tuple[str, pd.DataFrame, dict[str, str] | None]:
    """(dataset name, events, item_id -> item_text or None). Default: MovieLens ml-100k."""
    if interactions is None:
        from models.datasets import load_ml100k

        ml = load_ml100k()
        texts = dict(zip(ml.items["item_id"].astype(str), ml.items["item_text"].astype(str)))
        return "ml-100k", ml.interactions[["user_id", "item_id", "ts"]], texts
    path = Path(interactions)
    # an item's text is a name: "NA" or "None" is one (read as missing, such items got no text embedding; review)
    df, skipped = read_log_csv(path, required=("user_id", "item_id", "ts"), known=("item_text",),
                               ids=("user_id", "item_id"), names=("item_text",))
    if skipped:
        log(f"note: skipped {skipped:,} rows without a user_id or item_id")
    ignored = [c for c in df.columns if c not in ("user_id", "item_id", "ts", "item_text")]
    if ignored:  # a rating column among them made 1-star ratings positives without a word (review)
        log(f"note: ignored column(s) {', '.join(map(str, ignored[:8]))}: every row counts as one interaction")
    texts = None
    if "item_text" in df.columns:
        t = df.dropna(subset=["item_text"]).drop_duplicates("item_id")
        texts = dict(zip(t["item_id"].astype(str), t["item_text"].astype(str)))
    return path.stem, df[["user_id", "item_id", "ts"]], texts


def note_repeats(rows: int, events: int, log: Log) -> None:
    """Say how many rows the protocol collapsed (each user's first interaction with an item is kept): only the JSON's
    ``rows`` against ``events`` showed it (found by review)."""
    if events < rows:
        log(f"note: {rows - events:,} of {rows:,} rows repeat a user's item (or the whole row): each user's first "
            "interaction with an item is kept")


def note_catalogue_cap(n_items: int, cfg, log: Log) -> None:
    """Warn when the catalogue is larger than the items the model learns (``max_items`` most frequent): the rest get
    vectors from their text, or none, and are rarely if ever recommended (found by review: 23 % of a catalogue of
    10,450 items, said only by ``cold_items`` in the JSON)."""
    cap = getattr(cfg, "max_items", None)
    if cap is not None and n_items > cap:
        log(f"warning: {n_items - cap:,} of the {n_items:,} items are past the {cap:,} most frequent that the model "
            "learns: they get vectors from their item_text, or none (cold_items), and are rarely recommended; "
            "--max-items raises the cap (memory grows with its square)")


MIN_EVALUATED_USERS = 100  # users with a held-out item under which `evaluate recs` warns


def note_few_users(users: int, log: Log) -> None:
    if users < MIN_EVALUATED_USERS:  # "goal reached" from one hit among 10 users was printed as such (review)
        log(f"warning: only {users:,} users have the 3 distinct items a held-out test needs: each metric rests on "
            f"{users:,} test items, too few to compare methods ({MIN_EVALUATED_USERS:,} or more give numbers to "
            "trust)")


def _texts_for(item_ids: list[str], texts: dict[str, str] | None) -> list[str] | None:
    if not texts:
        return None
    return [texts.get(i, "") for i in item_ids]


def set_threads(n: int) -> None:
    """torch's threads, and those of the BLAS and OpenMP libraries loaded so far (numpy's and scipy's OpenBLAS
    used every core whatever --threads said; found by review)."""
    import scipy.linalg  # noqa: F401 - loads scipy's own BLAS, so that the limit below reaches it
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, n))
    threadpool_limits(limits=max(1, n))


# ------------------------------------------------------------------------------------- training
ARCHES = ("seqlinear", "sasrec")


def make_config(arch: str = "seqlinear", seed: int = 0, threads: int = 2, max_items: int | None = None):
    """The model's configuration; ``max_items``: the items the seqlinear model learns (None: its default)."""
    if arch == "seqlinear":
        from models.recs.seqlinear import LinearConfig

        return LinearConfig(seed=seed, threads=threads, **({"max_items": max_items} if max_items else {}))
    if max_items:
        raise ValueError("--max-items applies to --arch seqlinear (sasrec learns every item)")
    if arch == "sasrec":
        from models.recs.model import RecsConfig

        return RecsConfig(seed=seed, threads=threads)
    raise ValueError(f"unknown model arch {arch!r}; choose one of {ARCHES}")


def make_model(cfg, n_items: int):
    if getattr(cfg, "arch", "sasrec") == "seqlinear":
        from models.recs.seqlinear import SeqLinearModel

        return SeqLinearModel(cfg, n_items)
    from models.recs.model import SeqRecModel

    return SeqRecModel(cfg, n_items)


def train_model(split: Split, texts: dict[str, str] | None, cfg, progress: bool = True, log: Log = _quiet,
                refit_all: list[np.ndarray] | None = None):
    """Fit on TRAIN, early-stop on the validation item; optionally refit on `refit_all` sequences
    for the selected number of epochs (production artifact)."""
    ev = split.eval_users
    model = make_model(cfg, split.n_items)
    res = model.fit(split.fit_sequences("valid"), [split.train_seqs[u] for u in ev], split.valid[ev],
                    item_texts=_texts_for(split.item_ids, texts), progress=progress, log=log)
    if refit_all is None:
        return model, res
    final = make_model(cfg, split.n_items)
    res2 = final.fit(refit_all, item_texts=_texts_for(split.item_ids, texts), progress=progress, log=log,
                     max_epochs=max(1, res.best_epoch))
    res2.best_valid_ndcg10 = res.best_valid_ndcg10
    res2.best_epoch = res.best_epoch
    res2.seconds += res.seconds
    return final, res2


def train_for_test(split: Split, texts: dict[str, str] | None, cfg, progress: bool = True, log: Log = _quiet):
    """The model the TEST stage is scored with: fitted on TRAIN (validation score, epoch selection), then refit on
    TRAIN + validation items with what validation selected, as the baselines are and as the published artifact
    is (on everything). Never sees a test item."""
    return train_model(split, texts, cfg, progress=progress, log=log, refit_all=split.fit_sequences("test"))


def train_and_publish(interactions, registry_root: str | Path, seed: int = 0, threads: int = 2,
                      progress: bool = True, log: Log = _quiet, arch: str = "seqlinear",
                      max_items: int | None = None) -> tuple[str, dict]:
    from models.datasets import fingerprint
    from models.recs.recommender import write_artifacts
    from models.registry import Registry

    set_threads(threads)
    name, df, texts = load_log(interactions, log)
    log_df = normalize_log(df)
    note_repeats(len(df), len(log_df), log)
    split = leave_one_out(log_df)
    everything = split.history("test")
    everything = [np.append(s, t) if t >= 0 else s for s, t in zip(everything, split.test)]
    if not any(len(seq) >= 2 for seq in everything):  # it published a model of zero vectors (found by review)
        raise ValueError("no user has 2 or more distinct items: a sequence model has nothing to learn from")
    cfg = make_config(arch, seed, threads, max_items)
    note_catalogue_cap(split.n_items, cfg, log)
    t0 = time.time()
    model, res = train_model(split, texts, cfg, progress=progress, log=log, refit_all=everything)
    if res.best_valid_ndcg10 is not None and res.best_valid_ndcg10 <= 0:  # published without a word before (review)
        log("warning: validation NDCG@10 is 0: the model ranked no user's held-out item in its top 10. It is "
            "published all the same; compare it with `tidewater evaluate recs` on this log before serving it")
    popularity = np.bincount(np.concatenate(everything), minlength=split.n_items)
    segments = train_user_segments(model, everything, seed=seed)
    metrics = {"dataset": name, "rows": int(len(df)), "events": int(len(log_df)), "users": len(split.user_ids),
               "items": split.n_items, "valid_ndcg@10": res.best_valid_ndcg10, "epochs": res.epochs,
               "train_seconds": round(time.time() - t0, 1), "cold_items": res.cold_items,
               "text_fused": res.text_fused, "segments": int(len(segments))}
    reg = Registry(Path(registry_root) / "recs")
    version = reg.publish(
        lambda d: write_artifacts(d, model, split.item_ids, popularity, metrics, segments=segments),
        fingerprint=fingerprint(log_df), meta={"kind": "recs", "dataset": name, "seed": seed, **metrics},
    )
    return version, metrics


def train_user_segments(model, sequences, seed: int = 0) -> np.ndarray:
    """k-means centroids over every user's streaming vector (recomputed from their item sequence)."""
    from models.recs import user_vector as uv
    from models.recs.segments import train_segments

    window = int(getattr(model.cfg, "stream_window", 50))
    vectors = np.stack([uv.recompute(model.query_emb[seq], float(model.decay), window).vector()
                        for seq in sequences if len(seq)])
    return train_segments(vectors, seed=seed)


def build_index(registry_root: str | Path, kind: str = "auto") -> tuple[str, dict]:
    """Build a fresh FAISS index from the current recs model; publish it under <registry>/recs_index."""
    from models.recs.index import ItemIndex
    from models.registry import Registry

    reg = Registry(Path(registry_root) / "recs")
    model_dir = reg.current_path()
    ids = json.loads((model_dir / "item_ids.json").read_text())
    emb = np.load(model_dir / "item_emb.npy")
    idx_reg = Registry(Path(registry_root) / "recs_index")
    info: dict = {}

    def write(d: Path) -> None:
        index = ItemIndex.build(ids, emb, kind=kind, version=f"{model_dir.name}/{d.name}")
        index.save(d)
        info.update(kind=index.kind, nprobe=index.nprobe, n_items=len(ids), dim=int(emb.shape[1]))

    version = idx_reg.publish(write, fingerprint=model_dir.name.split("-")[-1] + "0" * 8,
                              meta={"model_version": model_dir.name})
    return version, {"model_version": model_dir.name, "index_version": version, **info}


# ------------------------------------------------------------------------------------- evaluation
def _ranks_from_results(results: list[list[tuple[str, float]]], targets: list[str]) -> np.ndarray:
    ranks = np.full(len(targets), 10 ** 9, dtype=np.int64)
    for r, (res, t) in enumerate(zip(results, targets)):
        for pos, (it, _) in enumerate(res):
            if it == t:
                ranks[r] = pos
                break
    return ranks


def evaluate_all(interactions=None, seed: int = 0, threads: int = 2, progress: bool = True,
                 log: Log = _quiet, arch: str = "seqlinear", max_items: int | None = None) -> dict:
    from tqdm import tqdm

    from models.recs.baselines import all_baselines, fit_baseline
    from models.recs.index import ItemIndex, exact_topk, recall_at_k
    from models.recs.rerank import RERANK_CANDIDATES, FullRankScorer, search_and_rerank
    set_threads(threads)
    name, df, texts = load_log(interactions, log)
    split = leave_one_out(df)
    ev = split.eval_users
    if len(ev) == 0:
        raise ValueError("no user has 3 or more distinct items: nothing to evaluate")
    out: dict = {"dataset": name, "users": int(len(ev)), "items": split.n_items, "rows": int(len(df)),
                 "events": int(sum(len(s) for s in split.history("test")) + len(ev)),
                 "log_users": len(split.user_ids)}
    note_repeats(out["rows"], out["events"], log)
    note_few_users(len(ev), log)
    curves: dict[str, list[float]] = {}

    # baselines
    baselines = {}
    for b in tqdm(all_baselines(seed=seed, threads=threads), desc="baselines", disable=not progress):
        t = time.time()
        fit_baseline(b, split, "test")
        m = evaluate_scorer(b.score, split, "test")
        baselines[b.name] = {**headline(m), "seconds": round(time.time() - t, 2)}
        curves[b.name] = m["ndcg@k"]
        log(f"{b.name}: {baselines[b.name]}")

    # model (fitted on TRAIN, selected on the validation item, refit on TRAIN + validation)
    cfg = make_config(arch, seed, threads, max_items)
    note_catalogue_cap(split.n_items, cfg, log)
    model, res = train_for_test(split, texts, cfg, progress=progress, log=log)
    hist = split.history("test")
    m = evaluate_scorer(model.score, split, "test", progress="score model" if progress else None)
    out["model"] = headline(m)
    curves["model"] = m["ndcg@k"]
    out["train"] = {"seconds": round(res.seconds, 1), "epochs": res.epochs, "best_epoch": res.best_epoch,
                    "valid_ndcg@10": round(res.best_valid_ndcg10 or 0.0, 6), "cold_items": res.cold_items,
                    "text_fused": res.text_fused, "threads": threads, "seed": seed, "arch": arch,
                    "fitted_on": "TRAIN + validation items (selected on validation, then refit)",
                    "stream_decay": round(model.decay, 4)}
    out["baselines"] = baselines

    # streaming path, as the worker serves it: decayed-mean user vector -> FAISS index (auto kind) with
    # consumed-item filter -> the full-rank model re-scores the top RERANK_CANDIDATES (when the model has one)
    index = ItemIndex.build(split.item_ids, model.item_emb, kind="auto", version="eval")
    qs = model.stream_vectors([hist[u] for u in ev])
    excl = [{split.item_ids[i] for i in hist[u]} for u in ev]
    targets = [split.item_ids[split.test[u]] for u in ev]
    full = FullRankScorer.from_model(model)
    mv = metrics_from_ranks(_ranks_from_results(index.search_many(qs, K_MAX, excl), targets))
    if full is not None:
        histories = [hist[u] for u in ev]  # the user's items are both the history and the exclusions
        top, top_scores = search_and_rerank(index, full, qs, K_MAX, RERANK_CANDIDATES, histories, histories)
        res_served = [[(split.item_ids[i], s) for i, s in zip(row, srow) if i >= 0]
                      for row, srow in zip(top.tolist(), top_scores.tolist())]
        ms = metrics_from_ranks(_ranks_from_results(res_served, targets))
    else:
        ms = mv
    out["streaming"] = {**headline(ms), "index_kind": index.kind, "decay": round(model.decay, 4),
                        "window": cfg.stream_window, "rerank_candidates": RERANK_CANDIDATES if full else 0,
                        "vector_only": headline(mv)}
    curves["streaming (user vector + index + re-rank)" if full else "streaming (user vector + index)"] = ms["ndcg@k"]

    # approximate index vs exact, on the real item table: nprobe calibrated on VALIDATION-stage user
    # vectors, recall measured on the TEST-stage user vectors (full-model and streaming queries)
    vhist = split.history("valid")
    calib = np.concatenate([model.user_hidden([vhist[u] for u in ev]), model.stream_vectors([vhist[u] for u in ev])])
    queries = np.concatenate([model.user_hidden([hist[u] for u in ev]), qs]).astype(np.float32)
    ex_ids = exact_topk(model.item_emb, queries, 10)
    approx_info = {}
    for kind in ("ivfpq", "ivf"):
        try:
            approx = ItemIndex.build(split.item_ids, model.item_emb, kind=kind, version=f"eval-{kind}",
                                     calibration_queries=calib, use_gpu=False)
        except RuntimeError as exc:  # faiss: too few items to train it (4-bit PQ needs 16): a diagnostic only
            approx_info[kind] = {"recall@10_vs_exact": None, "nlist": None, "nprobe": None,
                                 "error": str(exc).strip().splitlines()[-1]}
            continue
        _, ap_ids = approx.search_ids(queries, 10)
        approx_info[kind] = {"recall@10_vs_exact": round(recall_at_k(ap_ids, ex_ids, 10), 4),
                             "nlist": approx.nlist, "nprobe": approx.nprobe}
    out["index"] = {"recall@10_vs_exact": approx_info["ivfpq"]["recall@10_vs_exact"], "kind": "ivfpq",
                    **{k: v for k, v in approx_info["ivfpq"].items() if k != "recall@10_vs_exact"},
                    "ivf": approx_info["ivf"], "serving_kind": index.kind, "queries": int(len(queries))}

    best_name = max(baselines, key=lambda k: baselines[k]["ndcg@10"])
    best = baselines[best_name]["ndcg@10"]
    out["goal"] = {"best_baseline": best_name, "best_baseline_ndcg@10": best,
                   "target_ndcg@10": round(1.3 * best, 6),
                   "ratio": round(out["model"]["ndcg@10"] / best, 4) if best > 0 else None,
                   # undecided (None) when no baseline scores: 0 >= 1.3 × 0 is no win
                   "reached": bool(out["model"]["ndcg@10"] >= 1.3 * best) if best > 0 else None}
    out["peers"] = {"recbole_sasrec": "not run by this command: python bench/recbole_peer.py (own numpy<2 venv)"}
    out["_curves"] = curves
    return out


def write_report(result: dict, report_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    curves = result.get("_curves", {})
    rows = [("model", result["model"])] + [("streaming", result["streaming"])] + \
        [(k, v) for k, v in result["baselines"].items()]
    lines = [f"# Recommendation evaluation — {result['dataset']}", "",
             f"{result['users']} users evaluated (of {result.get('log_users', result['users'])}), {result['items']} "
             "items; time-ordered leave-one-out, full ranking.", "",
             "| method | NDCG@10 | Hit@10 | MRR@10 | Recall@20 |", "|---|---|---|---|---|"]
    for n, m in rows:
        lines.append(f"| {n} | {m['ndcg@10']:.4f} | {m['hit@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@20']:.4f} |")
    lines += ["", f"Index recall@10 vs exact (IVF): {result['index']['recall@10_vs_exact']}",
              f"Goal: {json.dumps(result['goal'])}", f"Training: {json.dumps(result['train'])}", "",
              "![NDCG@K](ndcg_at_k.png)", ""]
    (d / "report.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = np.arange(1, K_MAX + 1)
    for n, c in curves.items():
        ax.plot(ks, c, label=n, lw=2 if n == "model" else 1)
    ax.set_xlabel("K")
    ax.set_ylabel("NDCG@K")
    ax.set_title(f"NDCG@K, {result['dataset']} (leave-one-out, full ranking)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(d / "ndcg_at_k.png", dpi=110)
    plt.close(fig)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (d / "metrics.json").write_text(json.dumps({**public, "ndcg@k": curves}, indent=2))
    return [d / "report.md", d / "ndcg_at_k.png", d / "metrics.json"]
