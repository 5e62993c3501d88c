"""What a benchmark's numbers depend on: the CPU, its native precision, and its matmul peak."""

from __future__ import annotations

import time

from tunesmith.provenance import machine, machine_tag, provenance  # noqa: F401  (the benchmarks' imports)


def matmul_peak_gflops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """The best sustained GFLOP/s of square matmuls in `dtype` on every thread torch uses (on the
    GPU where there is one): the ceiling that model FLOP utilisation is measured against."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    gpu = torch.cuda.is_available()
    size = 8192 if gpu else size  # a GPU's peak needs large products
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    a, b = (torch.randn(size, size, device="cuda" if gpu else "cpu").to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b  # warm up: thread pool, kernel selection
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best
