"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a config, a data file, a model reference or an argument.

    The message is the whole story: it names the cause (and file:line where there is one).
    """

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, for a one-line message (its type when it has no text)."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text.strip() else type(exc).__name__


def where(path, line=None) -> str:
    """`path:line` or `path`, the prefix every located error message starts with."""
    return f"{path}:{line}" if line is not None else str(path)


class RunFailed(Exception):
    """A run that cannot go on for a reason outside the config (a full disk, a diverged loss).
    The CLI prints the message as one line and exits with code 1; what was saved stays."""

    exit_code = 1


class Stopped(Exception):
    """A run stopped on request (SIGTERM from a scheduler, Ctrl-C) after writing a checkpoint:
    not a failure, exit code 0, continue it with --resume."""

    exit_code = 0
