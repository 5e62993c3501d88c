"""Wall-clock time per phase of a job: printed as each phase ends, collected for its results file.

Which phase of a long job costs the time (model conversion, prompting baselines, training, test
scoring, the forgetting probe) differs between machines; a person waiting sees it as it happens,
and the quickstart's results file keeps it, so that a time in the README can be traced to phases.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

_collected: contextvars.ContextVar[list[dict] | None] = contextvars.ContextVar("phases", default=None)


@contextlib.contextmanager
def collect() -> Iterator[list[dict]]:
    """Every phase that ends inside this block, in order, as {"phase": name, "seconds": s}."""
    times: list[dict] = []
    token = _collected.set(times)
    try:
        yield times
    finally:
        _collected.reset(token)


@contextlib.contextmanager
def phase(name: str, console=None) -> Iterator[None]:
    """Time the block; a phase that raises is not recorded (its time measured nothing whole)."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    times = _collected.get()
    if times is not None:
        times.append({"phase": name, "seconds": round(seconds, 1)})
    if console is not None:
        console.print(f"[dim]time: {name} {seconds:.1f} s[/dim]")
