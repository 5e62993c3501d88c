"""What a benchmark's numbers depend on: the CPU, its native precision, and its matmul peak."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    """The CPU, and whether it has native bf16 (which precision `auto` picks)."""
    import torch

    from tunesmith.engine.precision import device, resolve_precision

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "auto_precision": resolve_precision("auto", device())}


def machine_tag() -> str:
    """e.g. avx512-bf16: what a result file's numbers depend on most (vector width, precision)."""
    m = machine()
    return f"{m['torch_cpu_capability'].lower()}-{m['auto_precision']}"


def matmul_peak_gflops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """The best sustained GFLOP/s of square matmuls in `dtype` on every thread torch uses: the
    ceiling that model FLOP utilisation is measured against."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b  # warm up: thread pool, kernel selection
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best
