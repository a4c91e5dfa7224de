"""`tidewater --help` and each command's help (tidewater/cli.py)."""
from __future__ import annotations

import re

import pytest

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


def _leaf_commands(typer_app, path=()):
    import typer.main

    group = typer.main.get_command(typer_app)

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, command

    yield from walk(group, path)


def test_regression_every_option_is_named_in_full_in_an_80_column_help():
    """The help was laid out in boxes that cut long option names at 80 columns ("--bootstrap-serv…",
    "--keep-runni…" in `tidewater up --help` piped or in a narrow terminal). Plain help wraps the text instead."""
    from typer.testing import CliRunner

    leaves = list(_leaf_commands(app))
    assert len(leaves) >= 15
    for path, command in leaves:
        out = CliRunner().invoke(app, [*path, "--help"], terminal_width=80).output
        for param in command.params:
            for name in [*param.opts, *param.secondary_opts]:
                if name.startswith("--"):
                    assert re.search(re.escape(name) + r"(?![\w-])", out), f"{' '.join(path)}: {name} not in its help"
        assert "…" not in out, f"{' '.join(path)}: a cut in its help"


def test_every_option_has_a_help_text():
    """`evaluate churn --progress` had none (found by review)."""
    missing = [(" ".join(path), param.opts[0]) for path, command in _leaf_commands(app) for param in command.params
               if param.param_type_name == "option" and not param.help]
    assert not missing, missing


def test_the_workers_start_up_line_says_where_it_serves_and_how_quiet_it_is():
    """At the default log level a worker printed nothing, not even its address (found by the README review)."""
    from streams.cli import startup_line
    from tidewater.settings import Settings

    s = Settings.from_env(environ={"TIDEWATER_WEB_HOST": "0.0.0.0", "TIDEWATER_WEB_PORT": "7000"})
    line = startup_line(s, "warning")
    assert "http://127.0.0.1:7000/health" in line and "--loglevel info for more" in line
    assert "--loglevel info" not in startup_line(s, "info")
    assert "http://[fd00::1]:7000/health" in startup_line(s.replace(web_host="fd00::1"), "info")


@pytest.mark.parametrize("host, url", [("::1", "http://[::1]:6066"), ("[::1]", "http://[::1]:6066"),
                                       ("fe80::1%eth0", "http://[fe80::1%25eth0]:6066"),
                                       ("10.0.0.5", "http://10.0.0.5:6066")])
def test_regression_an_ipv6_web_host_makes_a_url_the_worker_starts_with(host, url):
    """``http://fd00::1:6066`` is no URL: Faust refused it, and a worker bound to an IPv6 address did not start
    (found by review)."""
    from streams.app import canonical_url, create_app
    from tidewater.settings import Settings

    s = Settings.from_env(environ={"TIDEWATER_WEB_HOST": host})
    assert canonical_url(s) == url
    assert str(create_app(s).conf.canonical_url) == url
