"""The `tunesmith` command: one Typer app, each command a thin call into the library.

Exit codes: 0 success, 2 bad input (config, data, model reference, arguments), 1 anything else.
"""

from __future__ import annotations

import os
import sys

from tunesmith.cli import models, preparation, service, training  # noqa: F401  (their commands join the app, in this order in --help)
from tunesmith.cli.app import app, err
from tunesmith.errors import RunFailed, Stopped, UserError
from tunesmith.runtime.parent import follow_parent

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit code 2; the rest exit 1."""
    follow_parent()  # a service's worker ends with the service
    try:
        app(args=argv, prog_name="tunesmith", standalone_mode=True)
    except SystemExit:
        raise
    except (UserError, RunFailed) as e:
        rank = f"rank {os.environ['RANK']}: " if os.environ.get("RANK", "0") != "0" else ""  # under torchrun
        for line in str(e).splitlines():  # one problem per line, each a complete message
            err.print(f"error: {rank}{line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Stopped as e:  # SIGTERM or Ctrl-C while training: checkpoint written, not a failure
        if os.environ.get("RANK", "0") == "0":
            err.print(f"stopped: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug or an environment problem: say what, offer the traceback
        if os.environ.get("TUNESMITH_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        err.print(
            f"error: {type(e).__name__}: {first} (set TUNESMITH_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
