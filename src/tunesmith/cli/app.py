"""The `tunesmith` Typer app and what its commands share: the consoles, help texts read from
where the accepted values are defined, and argument checks."""

from __future__ import annotations

import typer
from rich.console import Console

from tunesmith.config import METHODS, PRECISIONS
from tunesmith.errors import UserError

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune pre-trained language models on the machine you have.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Help texts list the values the code accepts, read from where they are defined.
PRECISION_HELP = " | ".join(PRECISIONS)
KV_BUDGET_HELP = (
    "KV cache for all replies in flight, in MB; a request whose prompt plus max_tokens cannot fit "
    "gets 400, others wait their turn (default: a quarter of the free memory)"
)
MAX_ROWS_HELP = "replies decoding together in one batch (the rest wait in order)"
DEFAULT_MAX_QUEUE = 128
DEFAULT_MAX_ROWS = 32
METHODS_HELP = "Methods (config key `method`):\n\n" + "\n\n".join(f"{name}: {m.summary}" for name, m in METHODS.items())


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: use {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
