"""Errors meant for the user: the CLI prints their message without a traceback and exits with 2."""


class UserError(Exception):
    """Bad input, a missing prerequisite, an unreachable broker: something the user can fix."""


class InvalidSetting(UserError, ValueError):
    """A setting's value the worker cannot run with; the message names the environment variable."""
