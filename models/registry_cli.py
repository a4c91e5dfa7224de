"""`tidewater models list` / `tidewater models use`: what the registry holds, and which version is current.

Workers follow each kind's ``current`` pointer (hot reload), so pointing it at an earlier version is a rollback
without retraining or a restart."""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import typer

from models.registry import KINDS, Registry, describe, resolve_version, serving_index
from tidewater.errors import UserError

REGISTRY_HELP = "Registry root (TIDEWATER_REGISTRY_DIR of the workers)."


def _created(row: dict) -> str:
    ts = row.get("created_unix")
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "?"


def _headline(row: dict) -> str:
    parts = []
    for key, value in row.items():
        if key in ("version", "current", "created_unix"):
            continue
        parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def _index_note(root: Path, index_version: str) -> str | None:
    """Why the current index does not serve (``serving_index``, as the workers decide): it was built for another
    recs model than the current one, or its metadata cannot be read."""
    indexes, model = Registry(root / "recs_index"), Registry(root / "recs").current_or_none()
    if serving_index(indexes, model) == index_version:
        return None
    try:
        built_for = indexes.meta(index_version).get("model_version")
    except (OSError, ValueError) as exc:
        return f"index {index_version} has no readable meta.json ({exc}): workers serve the model's own index"
    return (f"index {index_version} was built for recs model {built_for}, the current recs model is {model}: "
            "workers serve that model's own index until an index built for it is current")


def _churn_view_note(reg: Registry, version: str) -> str | None:
    """What a worker will serve a churn version that predates the serving metadata (the event types and the ring
    length of its training view): guessed, so say so."""
    from models.churn.scorer import event_types

    try:
        meta = reg.meta(version)
    except (OSError, ValueError) as exc:
        return f"{version} has no readable meta.json ({exc})"
    guessed = []
    if "event_types" not in meta:
        guessed.append(f"{' and '.join(event_types(meta))} events")
    if "ring_events" not in meta:
        guessed.append("each user's whole ring")
    if not guessed:
        return None
    return (f"{version} predates the serving metadata: workers will serve it {', '.join(guessed)}, which may not be "
            "the view it was trained on (`tidewater train churn` records it)")


@contextlib.contextmanager
def _registry_access(registry: Path) -> Iterator[None]:
    """An unreadable or unwritable registry (permissions, a file where a directory should be) as a clear error."""
    try:
        yield
    except (OSError, ValueError) as exc:  # ValueError: a `current` naming no version of the registry
        raise UserError(f"cannot use the registry at {registry}: {exc}") from exc


def register(models_app: typer.Typer) -> None:
    @models_app.command("list")
    def list_versions(
        registry: Path = typer.Option(Path("var/registry"), "--registry", envvar="TIDEWATER_REGISTRY_DIR",
                                      help=REGISTRY_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object (kind -> versions)."),
    ) -> None:
        """Every published version of each kind (churn, recs, recs_index), oldest first; * marks the current."""
        if not registry.exists():  # it said "nothing published" for a mistyped path, or from another directory
            raise UserError(f"no registry at {registry.resolve()}: pass --registry (or TIDEWATER_REGISTRY_DIR), "
                            "relative to this directory, or publish a model there first (`tidewater train ...`)")
        with _registry_access(registry):
            found = describe(registry)
        for kind in KINDS:  # a pointer naming no version: say so (`models use` repairs it)
            try:
                Registry(registry / kind).current_version()
            except (OSError, ValueError) as exc:
                typer.secho(f"warning: {kind}: {exc}; repair it with `tidewater models use {kind} VERSION`",
                            fg="yellow", err=True)
        if as_json:
            typer.echo(json.dumps(found))
            return
        for kind, rows in found.items():
            typer.echo(f"{kind} ({registry / kind})" + ("" if rows else ": nothing published"))
            for row in rows:
                typer.echo(f"  {'*' if row['current'] else ' '} {row['version']}  {_created(row)}  {_headline(row)}")

    @models_app.command("use")
    def use_version(
        kind: str = typer.Argument(..., help=f"One of: {', '.join(KINDS)}."),
        version: str = typer.Argument(..., help="A version, in full (v0002-1a2b3c4d) or by number (v0002, 2)."),
        registry: Path = typer.Option(Path("var/registry"), "--registry", envvar="TIDEWATER_REGISTRY_DIR",
                                      help=REGISTRY_HELP),
    ) -> None:
        """Make VERSION the current one of KIND (a rollback or a pin): running workers load it at their next
        registry poll (TIDEWATER_MODEL_POLL_S) and stamp it on every output from then on."""
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
        reg = Registry(registry / kind)
        with _registry_access(registry):
            try:
                chosen = resolve_version(reg, version)
            except LookupError as exc:
                raise UserError(str(exc)) from exc
            with reg.lock():  # not between a concurrent publisher's numbering and its own pointer update
                try:
                    before = reg.current_version()
                except ValueError:  # the pointer this command repairs (it names no version of the registry)
                    before = "an invalid pointer"
                reg.set_current(chosen)
        typer.echo(f"{kind}: current {before or 'none'} -> {chosen}")
        index = Registry(registry / "recs_index").current_or_none()
        note = _index_note(registry, index) if kind in ("recs", "recs_index") and index else None
        if note:
            typer.secho(f"note: {note}", fg="yellow", err=True)
        if kind == "churn":
            note = _churn_view_note(reg, chosen)
            if note:
                typer.secho(f"note: {note}", fg="yellow", err=True)
