"""The `tidewater` command. Heavy imports (torch, faust, faiss) stay inside the commands so that
`tidewater --help` is instant and a missing optional piece fails with a clear message, not a traceback."""
from __future__ import annotations

import importlib
import sys
from typing import Optional

import typer

from tidewater.errors import UserError

app = typer.Typer(
    name="tidewater",
    help="Real-time retention and recommendation engine: Kafka + Faust streams, churn scoring, FAISS recommendations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create and inspect Tidewater's Kafka topics.", no_args_is_help=True)
train_app = typer.Typer(help="Train models on real data and publish them to the registry.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate models against baselines; `--json` prints one JSON object last.",
                           no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect the FAISS item index.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(index_app, name="index")

# Model commands live next to the models; each module exposes register(train, evaluate, index).
for _module in ("models.churn.cli", "models.recs.cli"):
    try:
        importlib.import_module(_module).register(train_app, evaluate_app, index_app)
    except ModuleNotFoundError as exc:  # a model package not present in this build
        if exc.name is None or not _module.startswith(exc.name):
            raise

# Stream commands (broker, topics, worker, up, replay, record) register themselves here.
for _module in ("infra.cli", "streams.cli"):
    try:
        importlib.import_module(_module).register(app, topics_app)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _module.startswith(exc.name):
            raise


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
