"""Errors meant for the user: the CLI prints their message without a traceback and exits with 2."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UserError(Exception):
    """Bad input, a missing prerequisite, an unreachable broker: something the user can fix."""


class InvalidSetting(UserError, ValueError):
    """A setting's value the worker cannot run with; the message names the environment variable."""


def writable_dir(path: "str | os.PathLike[str]", what: str) -> Path:
    """``path`` created (with its parents) and checked to take a new file: before long work that ends by writing
    there (training, an evaluation's report), so a wrong path fails at once with one line, not a traceback after
    minutes of work. ``what`` names the option or variable in the message."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder
