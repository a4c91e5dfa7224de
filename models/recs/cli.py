"""`tidewater train recs`, `tidewater index build`, `tidewater evaluate recs`. Heavy imports stay inside."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tidewater.errors import UserError, writable_dir

MAX_ITEMS_HELP = ("Items the seqlinear model learns, the most frequent (default 8,000; the rest get vectors from "
                  "their item_text, or none). The fit's memory peaks at about 40 × N² bytes: 2.6 GB at 8,000, "
                  "10 GB at 16,000.")
INTERACTIONS_HELP = ("CSV (or tab-, semicolon-separated) with columns user_id,item_id,ts[,item_text]; ts as ISO "
                     "dates, YYYYMMDD or epoch s/ms/µs/ns "
                     "(default: MovieLens ml-100k from recbole).")


def _user_errors(fn, *args, **kwargs):
    from models.datasets import DatasetMissing

    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, DatasetMissing) as exc:  # a missing file, a registry that cannot be written
        raise UserError(str(exc)) from exc
    except LookupError as exc:  # RegistryEmpty
        raise UserError(f"{exc} (run `tidewater train recs` first)") from exc


def register(train_app: typer.Typer, evaluate_app: typer.Typer, index_app: typer.Typer) -> None:
    @train_app.command("recs")
    def train_recs(
        interactions: Optional[Path] = typer.Option(None, "--interactions", help=INTERACTIONS_HELP),
        seed: int = typer.Option(0, "--seed", min=0, help="Random seed (training is deterministic given it)."),
        registry: Path = typer.Option(Path("var/registry"), "--registry", envvar="TIDEWATER_REGISTRY_DIR",
                                      help="Registry root; publishes to <root>/recs."),
        threads: int = typer.Option(2, "--threads", min=1, help="CPU threads for torch/BLAS."),
        arch: str = typer.Option("seqlinear", "--arch", help="seqlinear (default) or sasrec."),
        max_items: Optional[int] = typer.Option(None, "--max-items", min=1, help=MAX_ITEMS_HELP),
    ) -> None:
        """Train the recommender on ALL events (validation item used only to report/select) and publish
        item embeddings, config and the FAISS index to the registry."""
        from models.recs.pipeline import train_and_publish

        if arch not in ("seqlinear", "sasrec"):
            raise UserError(f"--arch must be seqlinear or sasrec, not {arch!r}")
        if max_items is not None and arch != "seqlinear":  # before the log and the baselines, not after (review)
            raise UserError("--max-items applies to --arch seqlinear (sasrec learns every item)")
        writable_dir(registry / "recs", "--registry")  # before minutes of training, not after
        version, metrics = _user_errors(train_and_publish, interactions, registry, seed=seed, threads=threads,
                                        log=lambda m: typer.echo(m, err=True), arch=arch, max_items=max_items)
        typer.echo(json.dumps({"version": version, "registry": str(registry / "recs"), **metrics}))

    @index_app.command("build")
    def index_build(
        registry: Path = typer.Option(Path("var/registry"), "--registry", envvar="TIDEWATER_REGISTRY_DIR",
                                      help="Registry root."),
        kind: str = typer.Option("auto", "--kind", help="auto (flat up to 50k items, else IVF), flat or ivf."),
    ) -> None:
        """Build the FAISS index from the current recs model; publish it under <registry>/recs_index."""
        from models.recs.pipeline import build_index

        if kind not in ("auto", "flat", "ivf"):
            raise UserError(f"--kind must be auto, flat or ivf, not {kind!r}")
        version, info = _user_errors(build_index, registry, kind=kind)
        typer.echo(json.dumps({"registry": str(registry / "recs_index"), **info}))

    @evaluate_app.command("recs")
    def evaluate_recs(
        interactions: Optional[Path] = typer.Option(None, "--interactions", help=INTERACTIONS_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last stdout line."),
        report_dir: Path = typer.Option(Path("reports/recs"), "--report-dir", help="Where the report goes."),
        seed: int = typer.Option(0, "--seed", min=0, help="Random seed of the split and the models."),
        threads: int = typer.Option(2, "--threads", min=1, help="CPU threads for torch/BLAS/implicit."),
        arch: str = typer.Option("seqlinear", "--arch", help="seqlinear (default) or sasrec."),
        max_items: Optional[int] = typer.Option(None, "--max-items", min=1, help=MAX_ITEMS_HELP),
    ) -> None:
        """Time-ordered leave-one-out evaluation of the model and every baseline (pop, item-KNN, ALS,
        Markov) plus the streaming user-vector + index path and approximate-index recall."""
        from models.recs.pipeline import evaluate_all, write_report

        if arch not in ("seqlinear", "sasrec"):
            raise UserError(f"--arch must be seqlinear or sasrec, not {arch!r}")
        if max_items is not None and arch != "seqlinear":  # before the log and the baselines, not after (review)
            raise UserError("--max-items applies to --arch seqlinear (sasrec learns every item)")
        writable_dir(report_dir, "--report-dir")  # before the evaluation, not after it
        result = _user_errors(evaluate_all, interactions, seed=seed, threads=threads,
                              log=lambda m: typer.echo(m, err=True), arch=arch, max_items=max_items)
        paths = write_report(result, report_dir)
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        public["report"] = [str(p) for p in paths]
        if as_json:
            typer.echo(json.dumps(public))
        else:
            rows = [("model", public["model"]), ("streaming", public["streaming"])] + list(public["baselines"].items())
            typer.echo(f"{public['dataset']}: {public['users']} users evaluated (of {public['log_users']}), "
                       f"{public['items']} items")
            typer.echo(f"{'method':<12} {'ndcg@10':>8} {'hit@10':>8} {'mrr@10':>8} {'recall@20':>9}")
            for n, m in rows:
                typer.echo(f"{n:<12} {m['ndcg@10']:>8.4f} {m['hit@10']:>8.4f} {m['mrr@10']:>8.4f} {m['recall@20']:>9.4f}")
            typer.echo(f"index recall@10 vs exact: {public['index']['recall@10_vs_exact']}; goal: {public['goal']}")
            typer.echo(f"report: {report_dir}")
