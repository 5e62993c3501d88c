"""Causal attention for one sequence, forward and backward: SDPA against tunesmith's matmul attention.

    .venv/bin/python bench/attention.py [--lengths 50,100,200,400,600,900] [--repeats 30]

One layer of the bundled model's shape (9 query heads sharing 3 key/value heads, 64 dims), one
sequence at a time as segment attention calls it, in bf16 and in fp32, both kernels timed
alternately in the same process; the median of the repeats. This is why bf16 runs on a CPU use
matmul attention and fp32 runs keep SDPA. Writes bench/results/attention-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import machine, machine_tag

from tunesmith.model.matmul_attention import causal_attention

HEADS, KV_HEADS, DIM = 9, 3, 64


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=DIM**-0.5, enable_gqa=True)[
        0
    ]


def _matmul(q, k, v):
    return causal_attention(q, k, v, DIM**-0.5)


def _time(fn, q, k, v, grad) -> float:
    t0 = time.perf_counter()
    fn(q, k, v).backward(grad)
    return time.perf_counter() - t0


def measure(length: int, dtype: torch.dtype, repeats: int) -> dict:
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(h, length, DIM, generator=g).to(dtype).requires_grad_() for h in (HEADS, KV_HEADS, KV_HEADS))
    grad = torch.randn(HEADS, length, DIM, generator=g).to(dtype)
    kernels = {"sdpa": _sdpa, "matmul": _matmul}
    times = {name: [] for name in kernels}
    for i in range(repeats + 3):
        for name, fn in kernels.items():  # alternate, so that machine noise hits both alike
            t = _time(fn, q, k, v, grad)
            if i >= 3:
                times[name].append(t)
    ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    return {"length": length, "sdpa_ms": ms["sdpa"], "matmul_ms": ms["matmul"], "speedup": ms["sdpa"] / ms["matmul"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="50,100,200,400,600,900")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = {
        name: [measure(n, dtype, args.repeats) for n in lengths]
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"attention-{machine_tag()}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "heads": HEADS,
                "kv_heads": KV_HEADS,
                "dim": DIM,
                "repeats": args.repeats,
                "rows": rows,
            },
            indent=2,
        )
    )
    print("| precision | tokens | SDPA ms | matmul ms | SDPA / matmul |")
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        for r in rs:
            print(f"| {name} | {r['length']} | {r['sdpa_ms']:.2f} | {r['matmul_ms']:.2f} | {r['speedup']:.2f}× |")


if __name__ == "__main__":
    main()
