"""`tidewater train churn` and `tidewater evaluate churn`.

Heavy imports (torch, transformers, lightgbm, lifetimes) stay inside the command functions so that
`tidewater --help` stays instant.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from tidewater.errors import UserError, writable_dir

DEFAULT_REGISTRY = Path("var/registry")
DEFAULT_HORIZON_DAYS = 273  # 39 weeks: the CDNOW holdout of Fader, Hardie & Lee (2005)
DEFAULT_CDNOW_CUTOFF = "1997-10-01"

PURCHASES_HELP = ("CSV purchase log with columns user_id,ts (ISO dates, YYYYMMDD or YYYYMMDDHHMM[SS] integers, "
                  "dates written numbers first (day or month first), or epoch seconds / ms / µs / ns told apart by "
                  "magnitude) and optional amount,quantity. Default: the full CDNOW file from the "
                  "installed lifetimes package.")
CUTOFF_HELP = ("Cut-off date YYYY-MM-DD: features use events before it, labels the horizon after it. "
               f"Default: {DEFAULT_CDNOW_CUTOFF} for CDNOW, else the end of the log minus the horizon.")


MAX_USERS_HELP = ("Train (and evaluate) on at most this many users of the log, always the same ones (a stable hash of "
                  "the id): bounds time and memory on very large logs. Default: every user.")


FEW_USERS = 1000  # users with purchases before the cut-off, under which `train`/`evaluate churn` warn


def _load(purchases: Optional[Path], cutoff: Optional[str], horizon_days: float, max_users: Optional[int] = None):
    """(the log, the cut-off, the dataset's name, the horizon in days: the one asked for, or the part of it that
    the log covers)."""
    import pandas as pd

    from .data import (LATER_CUTOFF_HINT, SPLIT_FRACTIONS, check_calibration, covered_horizon_days, load_purchases_csv,
                       log_end, parse_time, sample_users)
    from models.timestamps import spreadsheet_days_hint

    if not (math.isfinite(horizon_days) and 0 < horizon_days <= 36500):  # inf and nan passed "> 0" (review)
        raise UserError(f"--horizon-days must be a number of days in (0, 36500], got {horizon_days}")
    cut = parse_time(cutoff) if cutoff else None  # a bad date fails before the log is read
    if purchases is None:
        from models.datasets import DatasetMissing, load_cdnow

        try:
            frame = load_cdnow(sample=False)
        except DatasetMissing as exc:
            raise UserError(str(exc)) from exc
        name = "cdnow_master"
        cut = parse_time(DEFAULT_CDNOW_CUTOFF) if cut is None else cut
    else:
        frame = load_purchases_csv(purchases)
        name = Path(purchases).name
        if frame.attrs.get("ts_unit") not in ("iso", "seconds"):
            typer.secho(f"note: read column ts as {frame.attrs['ts_unit']}", err=True)
        hint = spreadsheet_days_hint(frame["ts"]) if frame.attrs.get("ts_unit") == "seconds" else None
        if hint:
            typer.secho(f"warning: {hint}", fg="yellow", err=True)
        if frame.attrs.get("rows_without_user"):
            typer.secho(f"note: skipped {frame.attrs['rows_without_user']:,} rows without a user_id", err=True)
        if frame.attrs.get("returns_dropped"):
            typer.secho(f"note: skipped {frame.attrs['returns_dropped']:,} returns (negative amount or quantity)",
                        err=True)
        if cut is None:
            end = float(frame["ts"].max())
            cut = float(int((end - horizon_days * 86400.0) // 86400) * 86400)
            _note_default_cutoff(frame, cut, end, horizon_days)
    frame, n_users = sample_users(frame, max_users)
    if max_users is not None and n_users > max_users:
        frame.attrs["sampled_from_users"] = n_users
        typer.secho(f"note: --max-users: using {max_users:,} of the log's {n_users:,} users", err=True)
    check_calibration(frame, cut, hint=LATER_CUTOFF_HINT if cutoff else (
        f"; the default cut-off is the end of the log minus the {horizon_days:g}-day horizon: pass --cutoff, or a "
        "shorter --horizon-days"))
    n_calibration = int(frame.loc[frame["ts"] < cut, "user_id"].nunique())
    if n_calibration < FEW_USERS:  # a forecast extrapolated from a few dozen users ran away without a word (review)
        n_val = round(SPLIT_FRACTIONS[1] * n_calibration)
        typer.secho(f"warning: only {n_calibration:,} users bought before the cut-off: the validation split that "
                    f"calibrates the scores and the forecast has {n_val:,} of them, and the metrics have wide "
                    f"intervals; {FEW_USERS:,} or more give numbers to trust", fg="yellow", err=True)
    covered = covered_horizon_days(frame, cut, horizon_days)
    if covered <= 0:
        raise UserError(f"the log ends on {pd.Timestamp(log_end(frame), unit='s'):%Y-%m-%d}, before the cut-off: "
                        "no horizon to label; pass an earlier --cutoff")
    if covered < horizon_days:  # it only warned: everyone past the log's end was a churner, and the goal "reached"
        typer.secho(f"warning: the log ends on {pd.Timestamp(log_end(frame), unit='s'):%Y-%m-%d}: the horizon is "
                    f"shortened from {horizon_days:g} to the {covered:g} days it covers (past its end every user "
                    "would look like a churner); pass an earlier --cutoff to keep it", fg="yellow", err=True)
    return frame, cut, name, covered


SPARSE_HORIZON = 0.1  # rows per day in the default horizon below this share of the rate before: a stray late row?


def _note_default_cutoff(frame, cut: float, end: float, horizon_days: float) -> None:
    """Say which cut-off the default gave, and warn when the log's end looks like a stray row: the default counts
    back from the last event, so one late row (a test order, a typo in a year) moved the cut-off and turned the
    users of the months before into churners, said only in the JSON's "cutoff" (found by review)."""
    import pandas as pd

    start = float(frame["ts"].min())
    day = 86400.0
    typer.secho(f"note: cut-off {pd.Timestamp(cut, unit='s'):%Y-%m-%d} (the log's last event, "
                f"{pd.Timestamp(end, unit='s'):%Y-%m-%d}, minus the {horizon_days:g}-day horizon; the log starts "
                f"{pd.Timestamp(start, unit='s'):%Y-%m-%d}); --cutoff sets it", err=True)
    before, after = int((frame["ts"] < cut).sum()), int((frame["ts"] >= cut).sum())
    rate_before = before / max((cut - start) / day, 1.0)
    rate_after = after / max((end - cut) / day, 1.0)
    if before and rate_after < SPARSE_HORIZON * rate_before:
        typer.secho(f"warning: the {horizon_days:g} days after that cut-off hold {after:,} rows ({rate_after:.2g} a "
                    f"day, against {rate_before:.2g} a day before it): if the log's last rows are strays, the "
                    "default cut-off is too late and most users look like churners; pass --cutoff",
                    fg="yellow", err=True)


PUBLISH_SHORT_HORIZON = 0.9  # a horizon the log shortens to less than this share of the one asked is not published


def _publishable(covered: float, asked: float) -> None:
    """A model for a horizon much shorter than asked is published only when asked for by that horizon: served, its
    churn probabilities would be read as the longer horizon's (found by review). A log a few days short of it (271
    of 273 days) publishes its model for the days it covers, which the registry records."""
    if covered < PUBLISH_SHORT_HORIZON * asked:
        raise UserError(f"not publishing a model for {covered:g} days when {asked:g} were asked: the log does not "
                        f"cover the horizon; pass --horizon-days {covered:g} to publish one for that horizon, or an "
                        "earlier --cutoff")


FORCE_HELP = "Publish even a model that ranks the test users no better than chance (test AUC at or below 0.5)."


def _better_than_chance(auc: float | None, n_test: int, force: bool) -> None:
    """Refuse to publish a model whose test AUC is at or below 0.5: the workers load what is published without a
    restart, and would make offers from scores that rank churners below loyal customers. It was published behind
    warnings only (found by review)."""
    if force or (auc is not None and math.isfinite(auc) and auc > 0.5):
        return
    shown = "undefined" if auc is None or not math.isfinite(auc) else f"{auc:.4f}"
    raise UserError(f"not publishing: the model's test AUC is {shown} on {n_test:,} test users, no better than "
                    "chance; a larger log or another --cutoff/--horizon-days may do better (--force publishes it)")


def _warn_thin_splits(meta: dict) -> None:
    for part, n in meta.get("thin_splits", {}).items():
        typer.secho(f"warning: the {part} split has only {n} users of one class (churners or buyers): its "
                    "calibration and AUCs rest on them and have wide intervals", fg="yellow", err=True)


def _serving_meta(frame, cutoff: float, max_users: Optional[int]) -> dict:
    """What a published version records about the data it saw, which serving and `evaluate offers` rely on: the
    --max-users sample (rebuilt for the held-out users), the event types and fields and the ring length it was
    trained on."""
    from .data import RING_EVENTS, event_fields, event_types, id_fields, ts_resolution

    sampled = frame.attrs.get("sampled_from_users")
    return {"sampled_from_users": sampled, "max_users": max_users if sampled else None,
            "event_types": event_types(frame, cutoff), "event_fields": event_fields(frame, cutoff),
            "id_fields": id_fields(frame, cutoff), "ts_resolution_s": ts_resolution(frame, cutoff),
            "ring_events": RING_EVENTS}


def _fingerprint(frame) -> str:
    """The training data's fingerprint: every column the model reads, the same for `train churn` and
    `evaluate churn --publish` (the first read amount and quantity, the second user_id and ts alone, so two logs
    that differed only in amounts got one fingerprint; found by review)."""
    from models.datasets import fingerprint

    return fingerprint(frame[[c for c in ("user_id", "ts", "amount", "quantity", "type", "item", "category")
                              if c in frame.columns]])


def _threads(threads: int) -> None:
    import torch

    # Small models on a shared CPU: intra-op threads mostly spin and contend; 1 is fastest here.
    torch.set_num_threads(max(1, threads))


def register(train_app: typer.Typer, evaluate_app: typer.Typer, index_app: typer.Typer) -> None:  # noqa: ARG001
    @train_app.command("churn")
    def train_churn(
        purchases: Optional[Path] = typer.Option(None, "--purchases", help=PURCHASES_HELP),
        cutoff: Optional[str] = typer.Option(None, "--cutoff", metavar="YYYY-MM-DD", help=CUTOFF_HELP),
        horizon_days: float = typer.Option(DEFAULT_HORIZON_DAYS, "--horizon-days", help="Churn horizon in days."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of the split, the initialisation and the batches."),
        lora: bool = typer.Option(False, "--lora", help="Fine-tune with peft LoRA adapters instead of all weights."),
        no_pretrain: bool = typer.Option(False, "--no-pretrain", help="Skip masked-event pre-training."),
        registry: Path = typer.Option(DEFAULT_REGISTRY, "--registry", envvar="TIDEWATER_REGISTRY_DIR",
                                      help="Registry root; publishes to <root>/churn."),
        threads: int = typer.Option(1, "--threads", min=1,
                                    help="torch CPU threads (1 is fastest for this small model)."),
        max_users: Optional[int] = typer.Option(None, "--max-users", help=MAX_USERS_HELP),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm progress bars on stderr."),
        force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    ) -> None:
        """Pre-train (masked events) and fine-tune the churn transformer; publish a registry version."""
        writable_dir(registry / "churn", "--registry")  # before minutes of training, not after
        _threads(threads)
        from models.registry import Registry

        from .data import build_task
        from .metrics import binary_metrics, forecast_metrics
        from .model import ChurnConfig
        from .train import predict_calibrated, save_model, tokenize_task, train_model

        asked = horizon_days
        frame, cut, name, horizon_days = _load(purchases, cutoff, horizon_days, max_users)
        _publishable(horizon_days, asked)
        task = build_task(frame, cut, horizon_days, seed=seed)
        task.check_splits()
        _warn_thin_splits(task.meta)
        cfg = ChurnConfig()
        tokens = tokenize_task(task.ring_sequences, task.as_of, cfg)
        res = train_model(task, cfg, seed=seed, do_pretrain=not no_pretrain, lora=lora, progress=progress,
                          tokens=tokens)
        te = task.idx("test")
        logit, _, rate = predict_calibrated(res.model, [tokens[0][i] for i in te], tokens[1][te])
        metrics = {k: v for k, v in binary_metrics(task.churn[te], logit).items()} | \
            forecast_metrics(task.count[te], rate)
        meta = {"dataset": name, "cutoff": task.meta["cutoff_iso"], "horizon_days": horizon_days,
                "horizon_days_asked": asked, "seed": seed,
                "lora": lora, "pretrained": not no_pretrain, "n_users": len(task.users),
                "train_seconds": round(res.info["train_seconds"], 1), "test_auc": metrics["auc"],
                "uses_encoder": res.model.encoder_contributes()} | _serving_meta(frame, cut, max_users)
        _better_than_chance(metrics["auc"], len(te), force)
        fp = _fingerprint(frame)
        reg = Registry(registry / "churn")
        version = reg.publish(lambda d: save_model(res.model, d, metrics=metrics, extra=res.info),
                              fingerprint=fp, meta=meta)
        typer.echo(f"published churn model {version} to {reg.root} "
                   f"(test AUC {metrics['auc']:.4f}, forecast corr {metrics['forecast_corr']:.3f}, "
                   f"trained in {res.info['train_seconds']:.0f} s)")
        if not meta["uses_encoder"]:
            typer.echo("note: no fine-tuning epoch beat the GLM start on the validation users, so this version is the "
                       "logistic/Poisson regression on the summary features; it scores without the encoder pass")

    @evaluate_app.command("churn")
    def evaluate_churn(
        purchases: Optional[Path] = typer.Option(None, "--purchases", help=PURCHASES_HELP),
        cutoff: Optional[str] = typer.Option(None, "--cutoff", metavar="YYYY-MM-DD", help=CUTOFF_HELP),
        horizon_days: float = typer.Option(DEFAULT_HORIZON_DAYS, "--horizon-days", help="Churn horizon in days."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of the split, the initialisation and the batches."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
        report_dir: Path = typer.Option(Path("reports/churn"), "--report-dir", help="Where the PNG/HTML report goes."),
        ablations: bool = typer.Option(True, "--ablations/--no-ablations",
                                       help="Also train without pre-training, with LoRA and without RFM input."),
        publish: Optional[Path] = typer.Option(None, "--publish",
                                               help="Registry root: also publish the evaluated model to <root>/churn."),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads."),
        max_users: Optional[int] = typer.Option(None, "--max-users", help=MAX_USERS_HELP),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm progress bars on stderr."),
        force: bool = typer.Option(False, "--force", help="With --publish: " + FORCE_HELP),
    ) -> None:
        """Train with default hyper-parameters; evaluate the model and every baseline on the same test users."""
        _threads(threads)
        from .evaluate import evaluate

        if force and publish is None:  # it would be taken for a publish that never happens (final review)
            raise UserError("--force only applies with --publish")
        if publish is not None:
            writable_dir(publish / "churn", "--publish")  # before the evaluation, not after it
        asked = horizon_days
        frame, cut, name, horizon_days = _load(purchases, cutoff, horizon_days, max_users)
        if publish is not None:
            _publishable(horizon_days, asked)
        reference = None
        if purchases is None:
            from models.datasets import load_cdnow

            reference = load_cdnow(sample=True)
        result, model, info = evaluate(frame, cut, horizon_days, dataset=name, seed=seed, progress=progress,
                                       ablations=ablations, report_dir=report_dir, reference_sample=reference)
        _warn_thin_splits(result["task"])
        if horizon_days != asked:  # in the JSON too: the labels are those of the shorter horizon
            result["task"]["horizon_days_asked"] = asked
        refused: UserError | None = None
        if publish is not None:
            try:  # said after the results, which a refusal must not swallow (minutes of evaluation; final review)
                _better_than_chance(result["model"]["auc"], result["task"]["n_test"], force)
            except UserError as exc:
                refused = exc
        if publish is not None and refused is None:
            from models.registry import Registry

            from .train import save_model

            fp = _fingerprint(frame)
            slim = {"model": result["model"], "baselines": {k: {"auc": v["auc"]} for k, v in result["baselines"].items()}}
            version = Registry(publish / "churn").publish(
                lambda d: save_model(model, d, metrics=slim, extra=info), fingerprint=fp,
                meta={"dataset": name, "cutoff": result["cutoff"], "horizon_days": horizon_days,
                      "horizon_days_asked": asked, "seed": seed,
                      "test_auc": result["model"]["auc"], "n_users": result["task"]["n_users"],
                      "uses_encoder": model.encoder_contributes()} | _serving_meta(frame, cut, max_users))
            result["published_version"] = version
        m = result["model"]
        lines = [f"dataset {name}: {result['task']['n_users']} users, test {result['task']['n_test']}, "
                 f"churn rate {result['task']['churn_rate']:.3f}"]
        rows = [("model", m)] + list(result["ablations"].items()) + list(result["baselines"].items())
        for key, r in rows:
            if r.get("auc") is None:
                lines.append(f"  {key:22s} failed: {r.get('error', 'no AUC')}")
                continue
            lines.append(f"  {key:22s} AUC {r['auc']:.4f}  PR-AUC {r['pr_auc']:.4f}  Brier {r.get('brier', float('nan')):.4f}"
                         + (f"  fc-corr {r['forecast_corr']:.3f}  cum-err {r['forecast_cum_error_pct']:+.1f}%"
                            if "forecast_corr" in r else ""))
        ci = result["ci_vs_best_baseline"]
        if ci.get("ci95"):
            lines.append(f"  AUC(model) - AUC({ci['best_baseline']}) = {ci['diff']:+.4f}  95% CI "
                         f"[{ci['ci95'][0]:+.4f}, {ci['ci95'][1]:+.4f}]; goal +0.01 reached: "
                         f"{result['goal_auc_plus_0_01_reached']}")
        else:
            lines.append(f"  {ci.get('error') or ci.get('note')}")
        if "report" in result:
            lines.append(f"  report: {result['report'].get('html') or result['report'].get('error')}")
        out = sys.stderr if as_json else sys.stdout
        for line in lines:
            print(line, file=out)
        if as_json:
            from .report import strict_json

            print(json.dumps(strict_json(result), default=float, separators=(",", ":"), allow_nan=False), flush=True)
        if refused is not None:
            raise refused
