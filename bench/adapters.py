"""Peak memory (RSS) and training speed per adapter type on the bundled model.

Every type trains on the same data (the quickstart's date task) for the same steps, batch,
precision and gradient checkpointing (so that weights, not activations, decide the memory;
prefix tuning cannot use it and runs without), each in a fresh process so that its peak RSS is its own
(the whole process: loading,
quantizing, training, saving). Run from the repository root:

    .venv/bin/python bench/adapters.py [--steps 10] [--repeats 3] [--out FILE]

writes the JSON (by default bench/results/adapters-<cpu capability>-<precision>.json, e.g.
adapters-avx512-bf16.json) and prints a Markdown table. Numbers are side by side from one run on one
machine; compare them with each other, not with another machine's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine, machine_tag

TYPES = {
    "full": {"type": "none"},
    "lora": {"type": "lora", "r": 16, "alpha": 32},
    "dora": {"type": "lora", "r": 16, "alpha": 32, "dora": True},
    "qlora-nf4": {"type": "qlora", "r": 16, "alpha": 32},
    "qlora-8bit": {"type": "qlora", "r": 16, "alpha": 32, "bits": 8},
    "ia3": {"type": "ia3"},
    "prefix": {"type": "prefix", "virtual_tokens": 20},
    "prompt": {"type": "prompt", "virtual_tokens": 20},
}
PRECISION = "auto"
LR = {"full": 5e-5, "ia3": 1e-2, "prefix": 1e-2, "prompt": 3e-2}


def run_one(name: str, steps: int, workdir: Path, train_options: dict | None = None) -> dict:
    """Train one type in this process; its peak RSS is this process's."""
    from tunesmith.config import validate_config
    from tunesmith.run import train
    from tunesmith.tasks.dates import write_splits

    splits = write_splits(workdir / "data")
    tree = {
        "name": name,
        "model": "smollm2-135m-instruct",
        "method": "sft",
        "adapter": TYPES[name],
        "data": {"train": str(splits["train"]), "val": str(splits["val"]), "max_length": 256},
        "train": {
            "max_steps": steps,
            "batch_size": 8,
            "lr": LR.get(name, 1e-3),
            "warmup": 0,
            "seed": 0,
            "precision": PRECISION,
            "log_every": steps,
            "gradient_checkpointing": name != "prefix",  # prefix tuning cannot recompute (its KV prefix)
            **(train_options or {}),
        },
        "eval": {"every": steps},
        "output": {"dir": str(workdir / "runs"), "save_every": None},
    }
    t0 = time.perf_counter()
    summary = train(validate_config(tree, "bench"), quiet=True)
    return {
        "type": name,
        "adapter": TYPES[name],
        "steps": summary["steps"],
        "trainable_parameters": summary["trainable_parameters"],
        "tokens_per_s": summary["tokens"] / summary["train_seconds"],
        "train_seconds": summary["train_seconds"],
        "process_seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gradient_checkpointing": tree["train"]["gradient_checkpointing"],
        "return_memory": tree["train"].get("return_memory", True),
        "final_loss": summary["final_loss"],
        "val_loss": summary["val_loss"],
        "precision": summary["precision"],
    }


def measure_once(name: str, steps: int, train_options: dict | None = None) -> dict:
    """run_one in a fresh process, so that the peak RSS it reports is that run's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--steps",
                str(steps),
                "--workdir",
                tmp,
                "--train-options",
                json.dumps(train_options or {}),
            ],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        sys.exit(f"{name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(name: str, steps: int, train_options: dict | None = None, repeats: int = 1) -> dict:
    """The median run of `repeats` fresh processes by peak RSS, with every run's peak and speed: a
    CPU run's peak moves by up to ~15% between identical runs (where the C allocator's per-thread
    heaps happen to fragment), so one run cannot tell a 10% difference."""
    runs = sorted((measure_once(name, steps, train_options) for _ in range(repeats)), key=lambda r: r["peak_rss_mib"])
    row = dict(runs[len(runs) // 2])
    row["peak_rss_runs"] = [round(r["peak_rss_mib"]) for r in runs]
    row["tokens_per_s_runs"] = [round(r["tokens_per_s"], 1) for r in runs]
    print(f"{name} {train_options or ''}: {row['peak_rss_runs']} MiB, {row['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per type; the median peak RSS is reported")
    ap.add_argument("--out", type=Path, help="default: bench/results/adapters-<machine tag>.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--train-options", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.workdir, json.loads(args.train_options))))
        return
    rows = [measure(name, args.steps, repeats=args.repeats) for name in args.types.split(",")]
    result = {
        "machine": machine(),
        "steps": args.steps,
        "batch_size": 8,
        "precision": PRECISION,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out = args.out or Path(f"bench/results/adapters-{machine_tag()}.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    lora = next((r for r in rows if r["type"] == "lora"), None)
    print(
        f"| type | trainable parameters | peak RSS (MiB, median of {args.repeats}) | runs | vs LoRA | tokens/s | vs "
        "LoRA | val loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rss = f"{r['peak_rss_mib'] / lora['peak_rss_mib']:.2f}×" if lora else ""
        speed = f"{r['tokens_per_s'] / lora['tokens_per_s']:.2f}×" if lora else ""
        runs = "–".join(str(x) for x in (r["peak_rss_runs"][0], r["peak_rss_runs"][-1]))
        print(
            f"| {r['type']} | {r['trainable_parameters']:,} | {r['peak_rss_mib']:.0f} | {runs} | {rss} | "
            f"{r['tokens_per_s']:.0f} | {speed} | {r['val_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
