"""`tidewater --help` and each command's help (tidewater/cli.py)."""
from __future__ import annotations

import re

from tidewater.cli import app


def _commands(typer_app):
    for info in typer_app.registered_commands:
        yield info
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance)


def test_regression_help_texts_do_not_break_lines_mid_sentence():
    """Wrapped docstrings kept their line breaks in the help's command lists ("... every partition of the clicks
    topic: event time has reached TS there. A⏎partition's timers ..."; found by review)."""
    helps = [info.help for info in _commands(app)]
    assert len(helps) >= 15 and all(helps)
    assert not [h for h in helps if re.search(r"(?<!\n)\n(?!\n)", h)]
