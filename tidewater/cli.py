"""The `tidewater` command. Heavy imports (torch, faust, faiss) stay inside the commands so that
`tidewater --help` is instant and a missing optional piece fails with a clear message, not a traceback."""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Optional

import typer

from tidewater.errors import UserError

# plain help (click's): Rich's boxes cut long option names at 80 columns ("--bootstrap-serv…") where plain text wraps
_PLAIN = {"rich_markup_mode": None}
app = typer.Typer(
    **_PLAIN,
    name="tidewater",
    help="Real-time retention and recommendation engine: Kafka + Faust streams, churn scoring, FAISS recommendations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(**_PLAIN, help="Create and inspect Tidewater's Kafka topics.", no_args_is_help=True)
train_app = typer.Typer(**_PLAIN, help="Train models on real data and publish them to the registry.", no_args_is_help=True)
evaluate_app = typer.Typer(**_PLAIN, help="Evaluate models against baselines; `--json` prints one JSON object last.",
                           no_args_is_help=True)
index_app = typer.Typer(**_PLAIN, help="Build the FAISS item index of the current recs model.", no_args_is_help=True)
models_app = typer.Typer(**_PLAIN, help="List the registry's model versions; make one current (rollback).",
                         no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(index_app, name="index")
app.add_typer(models_app, name="models")

# Model commands live next to the models; each module exposes register(train, evaluate, index).
for _module in ("models.churn.cli", "models.recs.cli"):
    try:
        importlib.import_module(_module).register(train_app, evaluate_app, index_app)
    except ModuleNotFoundError as exc:  # a model package not present in this build
        if exc.name is None or not _module.startswith(exc.name):
            raise

importlib.import_module("models.registry_cli").register(models_app)

# Stream commands (broker, topics, worker, up, replay, record) register themselves here.
for _module in ("infra.cli", "streams.cli"):
    try:
        importlib.import_module(_module).register(app, topics_app)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _module.startswith(exc.name):
            raise


@evaluate_app.command("offers")
def evaluate_offers(
    registry: str = typer.Option("var/registry", "--registry", envvar="TIDEWATER_REGISTRY_DIR",
                                 help="Registry root holding the churn model."),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                              help="Churn threshold (default: TIDEWATER_CHURN_THRESHOLD's)."),
    split: str = typer.Option("test", "--split", help="Customers to report on: test (held out) or val."),
    purchases: Optional[Path] = typer.Option(
        None, "--purchases", help="The purchase log (CSV user_id,ts[,amount,quantity]) the current churn model was "
                                  "trained on, when it is not CDNOW."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print only the JSON object (it is always the last stdout line)."),
) -> None:
    """Offline check of the offer policy: replay the calibration period, score everyone at the cut-off with the
    current churn model, and compare the churn rate of offered customers with the base rate (lift), random
    targeting and recency targeting, on the model's held-out test customers. The policy, profile and inactivity
    settings are the worker's (TIDEWATER_CHURN_THRESHOLD, TIDEWATER_OFFER_*, ...)."""
    import dataclasses
    import json

    from models.registry import RegistryEmpty
    from tidewater.engine import EngineConfig
    from tidewater.offer_check import CheckConfig, run_check
    from tidewater.settings import Settings

    worker = EngineConfig.from_settings(Settings.from_env())
    config = CheckConfig(inactivity_gap_s=worker.inactivity_gap_s, policy=worker.offers, profile=worker.profile)
    if threshold is not None:
        config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, churn_threshold=threshold))
    try:
        if split not in ("test", "val"):
            raise UserError("--split must be test or val")
        frame = None
        if purchases is not None:
            from models.churn.data import load_purchases_csv

            frame = load_purchases_csv(purchases)
        result = run_check(registry, config, frame=frame, split=split)
    except RegistryEmpty as exc:
        raise UserError(f"{exc}: run `tidewater train churn` first") from exc
    except (ValueError, OSError) as exc:  # a log that is not the model's, a missing file
        raise UserError(str(exc)) from exc
    if not as_json:
        typer.echo(f"{result['dataset']} cut-off {result['cutoff'][:10]}, model {result['model_version']}: "
                   f"{result['offers']} offers to {result['customers']} {split} customers "
                   f"({result['offered_fraction']:.1%}); base churn rate {result['base_churn_rate']:.1%}")
        for name in ("policy", "policy_without_value_rule", "score_targeting", "recency_targeting",
                     "random_targeting"):
            if name in result and result[name].get("lift") is not None:
                typer.echo(f"  {name:<26} churn rate {result[name]['churn_rate']:.1%}  lift {result[name]['lift']:.3f}")
    typer.echo(json.dumps(result))


def _reflow(text: str) -> str:
    """A docstring as help text: the lines of each paragraph joined (the help renderer keeps single line breaks,
    so wrapped docstrings broke mid-sentence in `--help`), paragraphs kept."""
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines())
                        for paragraph in inspect.cleandoc(text).split("\n\n"))


def _reflow_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = _reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        _reflow_help(group.typer_instance)


_reflow_help(app)


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
