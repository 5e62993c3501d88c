"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a config, a data file, a model reference or an argument.

    The message is the whole story: it names the cause (and file:line where there is one).
    """

    exit_code = 2


def where(path, line=None) -> str:
    """`path:line` or `path`, the prefix every located error message starts with."""
    return f"{path}:{line}" if line is not None else str(path)
