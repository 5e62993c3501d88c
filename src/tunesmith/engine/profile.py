"""Where a training step's time goes: an operator profile of a few steps, on request.

`train.profile_steps: N` profiles N optimizer steps after two warm-up steps (thread pools,
allocator, kernel selection) and writes `profile.txt` to the run directory: time per step,
self time grouped by kind of work (matmuls, attention, casts and copies, the loss, the
optimizer, elementwise and norms), then the busiest operators. Self time is time in the operator
itself, not in operators it calls, so the groups add up to the profiled time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from tunesmith import atomic

if TYPE_CHECKING:
    from pathlib import Path

WARMUP_STEPS = 2
GROUPS = [  # first match wins; names are aten operator names without the namespace
    ("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "_addmm_activation")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("loss (log-softmax, cross-entropy)", ("log_softmax", "cross_entropy", "nll_loss", "softmax_backward")),
    ("optimizer", ("_foreach", "adam", "lerp", "addcdiv", "linalg_vector_norm")),
    (
        "casts and copies",
        (
            "copy_",
            "_to_copy",
            "to",
            "clone",
            "contiguous",
            "cat",
            "index",
            "gather",
            "scatter",
            "masked",
            "nonzero",
            "embedding",
            "fill_",
            "zero_",
            "empty",
            "zeros",
            "ones",
        ),
    ),
    (
        "elementwise and norms",
        (
            "mul",
            "add",
            "sub",
            "div",
            "silu",
            "rsqrt",
            "mean",
            "pow",
            "neg",
            "sum",
            "exp",
            "sigmoid",
            "where",
            "sin",
            "cos",
            "softmax",
            "threshold",
            "sqrt",
        ),
    ),
]


def group_of(op: str) -> str:
    name = op.split("::")[-1].lstrip("_")
    for group, prefixes in GROUPS:
        if any(
            name == p or name.startswith(p + "_") or (len(p) > 4 and name.startswith(p))
            for p in (q.lstrip("_") for q in prefixes)
        ):
            return group
    return "other"


class StepProfiler:
    """Call `before_step(step)` and `after_step(step)` around each optimizer step."""

    def __init__(self, steps: int | None, path: Path, first_step: int) -> None:
        self.steps, self.path = steps, path
        self.start = first_step + WARMUP_STEPS + 1  # steps count from 1
        self.profiler: torch.profiler.profile | None = None
        self.t0, self.done = 0.0, not steps
        self.profiled, self.tokens = 0, 0

    def before_step(self, step: int) -> None:
        if not self.done and self.profiler is None and step == self.start:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.start()
            self.t0 = time.perf_counter()

    def after_step(self, step: int, tokens: int) -> None:
        if self.profiler is None:
            return
        self.profiled, self.tokens = self.profiled + 1, self.tokens + tokens
        if self.profiled == self.steps:
            self.finish()

    def finish(self) -> None:
        """Write the profile (of fewer steps if training ended first)."""
        if self.profiler is None:
            return
        seconds = time.perf_counter() - self.t0
        self.profiler.stop()
        if self.profiled:
            atomic.write_text(self.path, summarise(self.profiler, self.profiled, seconds, self.tokens))
        self.done, self.profiler = True, None


def summarise(profiler: torch.profiler.profile, steps: int, seconds: float, tokens: int) -> str:
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events) or 1
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    lines = [
        f"{steps} steps profiled after {WARMUP_STEPS} warm-up steps: {seconds / steps:.3f} s per step, "
        f"{tokens / seconds:.0f} tokens/s (profiling adds a little)",
        "",
        "where the time goes (self CPU time):",
    ]
    for group, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {group:<36} {us / 1e6 / steps:8.3f} s/step {us / total_us:6.1%}")
    lines += ["", "busiest operators:", f"  {'operator':<48} {'s/step':>8} {'share':>7} {'calls/step':>10}"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:25]:
        lines.append(
            f"  {e.key[:48]:<48} {e.self_cpu_time_total / 1e6 / steps:8.3f} "
            f"{e.self_cpu_time_total / total_us:7.1%} {e.count / steps:10.0f}"
        )
    return "\n".join(lines) + "\n"
