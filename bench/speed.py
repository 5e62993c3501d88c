"""tunesmith against TRL, side by side in one run: real tokens/s, peak RSS, held-out loss, MFU.

    make bench        (or: .venv/bin/python bench/speed.py [--examples 96] [--only lora])

Every run trains the bundled SmolLM2-135M-Instruct on the same generated variable-length chat
examples (bench/chat_data.py) for one epoch with the same hyperparameters (batch 8, constant
learning rate, no warmup, clipping at 1.0, LoRA r=16 alpha=32 on all linear layers), each in a
fresh process so that its peak RSS is its own. TRL runs in its own environment
(bench/.venv-trl, made by `make bench`) in its default settings and in the settings that are
fastest for it on a CPU; the ratios compare tunesmith with TRL's fastest. Real tokens are
non-padding tokens; a packed row's tokens are all real. Model FLOP utilisation counts 4N FLOP per
real token for LoRA (forward 2N, backward through frozen weights 2N) and 6N for full fine-tuning,
N the model's parameters, against the bf16 matmul peak measured here. One piece of code
(bench/heldout.py) measures every result's loss on held-out examples, so the final losses compare.

Writes bench/results/speed-<machine>.json and speed-<machine>.png; prints a Markdown table.
`--profile N` also profiles N steps of each tunesmith run (`train.profile_steps`; the profile is in
the row's "profile"); profiled steps run slower, so those results go to speed-profile-<machine>.json.
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

from machine import machine, machine_tag, matmul_peak_gflops

BENCH = Path(__file__).resolve().parent
TRL_PYTHON = BENCH / ".venv-trl" / "bin" / "python"
COMMON = {"batch_size": 8, "max_length": 1024, "seed": 0}
LR = {"lora": 2e-4, "full": 2e-5}
PACKED = {"batch_size": 2}  # rows of up to 1024 tokens: about as many tokens per step as 8 examples

# (name, tool, kind, adapter, tool-specific settings)
RUNS = [
    ("trl-default", "trl", "sft", "lora", {"use_cpu": True}),
    ("trl-packed", "trl", "sft", "lora", {"use_cpu": True, "packing": True, "gradient_checkpointing": False, **PACKED}),
    ("trl-padding-free", "trl", "sft", "lora",  # TRL enforces no max_length without packing; no example is longer
     {"use_cpu": True, "padding_free": True, "gradient_checkpointing": False, "max_length": None}),
    ("tunesmith", "tunesmith", "sft", "lora", {}),
    ("tunesmith-packed", "tunesmith", "sft", "lora", {"packing": True, **PACKED}),
    ("trl-full", "trl", "sft", "full", {"use_cpu": True, "packing": True, "gradient_checkpointing": False, **PACKED}),
    ("tunesmith-full", "tunesmith", "sft", "full", {"packing": True, **PACKED}),
    ("trl-dpo", "trl", "dpo", "lora", {"use_cpu": True, "gradient_checkpointing": False}),
    ("tunesmith-dpo", "tunesmith", "dpo", "lora", {}),
]
GROUPS = {"lora": ("sft", "lora"), "full": ("sft", "full"), "dpo": ("dpo", "lora")}


def tunesmith_run(spec: dict) -> dict:
    """One tunesmith run in this process (its peak RSS is this process's)."""
    from tunesmith.config import validate_config
    from tunesmith.train import train

    packing = spec["options"].get("packing", False)
    tree = {
        "name": "bench", "model": spec["model"], "method": spec["kind"],
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
        if spec["adapter"] == "lora" else {"type": "none"},
        "data": {"train": spec["data"], "max_length": spec["max_length"], "packing": packing},
        "train": {"epochs": 1, "batch_size": spec["batch_size"], "lr": spec["lr"], "schedule": "constant", "warmup": 0,
                  "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": spec["seed"], "precision": "auto", "log_every": 1,
                  **{k: v for k, v in spec["options"].items() if k != "packing"}},
        "output": {"dir": spec["out"], "save_every": None},
    }
    if spec["kind"] == "dpo":
        tree["preference"] = {"loss": "sigmoid", "beta": 0.1}
    summary = train(validate_config(tree, "bench"), quiet=True)
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    profile = Path(summary["run_dir"]) / "profile.txt"
    return {"tool": "tunesmith", "tokens": summary["tokens"], "train_seconds": summary["train_seconds"],
            "steps": summary["steps"], "train_loss": sum(losses) / len(losses), "last_loss": losses[-1],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "final": summary["final"],
            **({"profile": profile.read_text()} if profile.is_file() else {})}


def run(name: str, tool: str, kind: str, adapter: str, options: dict, data: dict, model: str, workdir: Path) -> dict:
    """One run in a fresh process of its tool's environment, with its held-out loss."""
    from heldout import measure

    settings = {k: v for k, v in options.items() if k != "batch_size"}
    spec = {**COMMON, "kind": kind, "adapter": adapter, "model": model, "lr": LR[adapter], "options": settings,
            "data": str(data["dpo" if kind == "dpo" else "sft"]), "out": str(workdir / name),
            "batch_size": options.get("batch_size", COMMON["batch_size"])}
    python = TRL_PYTHON if tool == "trl" else sys.executable
    args = [str(python), str(BENCH / "trl_run.py"), json.dumps(spec)] if tool == "trl" else \
        [str(python), __file__, "--one", json.dumps(spec)]
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        print(f"bench run {name} failed: {tail}", file=sys.stderr)
        return {"name": name, "tool": tool, "kind": kind, "adapter": adapter, "options": options, "error": tail}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(name=name, kind=kind, adapter=adapter, options=options, process_seconds=round(time.perf_counter() - t0, 1),
               tokens_per_s=row["tokens"] / row["train_seconds"])
    if kind == "sft":
        row["heldout_loss"] = measure(Path(row["final"]), Path(model), data["heldout"])
    print(f"{name}: {row['tokens_per_s']:.0f} tok/s, {row['peak_rss_mib']:.0f} MiB, "
          f"held-out loss {row.get('heldout_loss', float('nan')):.4f}", file=sys.stderr)
    return row


def parameters(model: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(p.numel() for p in m.parameters())


def summarise(rows: list[dict], n_params: int, peak_bf16: float) -> dict:
    """Per group: tunesmith's best against TRL's default and fastest, and tunesmith's MFU."""
    out = {}
    for group, (kind, adapter) in GROUPS.items():
        ours = [r for r in rows if r["tool"] == "tunesmith" and (r["kind"], r["adapter"]) == (kind, adapter)]
        theirs = [r for r in rows if r["tool"] == "trl" and (r["kind"], r["adapter"]) == (kind, adapter)]
        if not ours or not theirs:
            continue
        best, trl_best = max(ours, key=lambda r: r["tokens_per_s"]), max(theirs, key=lambda r: r["tokens_per_s"])
        flop_per_token = (4 if adapter == "lora" else 6) * n_params
        g = {"tunesmith": best["name"], "trl_fastest": trl_best["name"],
             "speed_ratio": best["tokens_per_s"] / trl_best["tokens_per_s"],
             "rss_ratio": best["peak_rss_mib"] / trl_best["peak_rss_mib"]}
        for r in ours + theirs:
            r["mfu"] = r["tokens_per_s"] * flop_per_token / (peak_bf16 * 1e9)
        if kind == "sft":  # held-out loss of runs with the same batches and steps: unpacked, packed
            g["loss_ratios"] = {f"{ours_row['name']}/{theirs_row['name']}": ours_row["heldout_loss"] / theirs_row["heldout_loss"]
                                for ours_row in ours for theirs_row in theirs
                                if bool(ours_row["options"].get("packing")) == bool(theirs_row["options"].get("packing"))}
        packed = [r for r in ours if r["options"].get("packing")]
        if packed:
            g["mfu_packed"] = packed[0]["mfu"]
        out[group] = g
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5))
    names = [r["name"] for r in rows]
    colors = ["tab:green" if r["tool"] == "tunesmith" else "tab:gray" for r in rows]
    ax1.barh(names, [r["tokens_per_s"] for r in rows], color=colors)
    ax1.set_xlabel("real tokens/s (higher is better)")
    ax2.barh(names, [r["peak_rss_mib"] for r in rows], color=colors)
    ax2.set_xlabel("peak RSS, MiB (lower is better)")
    ax2.set_yticklabels([])
    for ax in (ax1, ax2):
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64, help="training examples (one epoch); DPO pairs: a third of it")
    ap.add_argument("--only", help="comma-separated run names (default: all)")
    ap.add_argument("--profile", type=int, default=0, help="profile this many steps of each tunesmith run (profile.txt); "
                    "profiling slows those steps, so results go to speed-profile-<machine>.json")
    ap.add_argument("--out", type=Path, help="default: bench/results/speed-<machine>.json")
    ap.add_argument("--table", type=Path, help="print the table of an earlier results file and stop")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        result = json.loads(args.table.read_text())
        result["summary"] = summarise(result["rows"], result["parameters"], result["matmul_peak_gflops"]["bf16"])
        print_table(result)
        return
    if args.one:
        print(json.dumps(tunesmith_run(json.loads(args.one))))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"{TRL_PYTHON}: missing; `make bench` creates TRL's environment")

    import chat_data

    from tunesmith.model.resolve import resolve

    model = str(resolve("smollm2-135m-instruct").path)
    peaks = {p: matmul_peak_gflops(p) for p in ("bf16", "fp32")}
    print(f"matmul peak: bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s", file=sys.stderr)
    chosen = set(args.only.split(",")) if args.only else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = chat_data.write(Path(tmp) / "data", args.examples, 32)
        dpo_pairs = Path(tmp) / "data" / "dpo-head.jsonl"  # DPO: fewer pairs (each is two sequences and a reference pass)
        dpo_pairs.write_text("".join(data["dpo"].read_text().splitlines(keepends=True)[: max(8, args.examples // 3)]))
        data["dpo"] = dpo_pairs
        for name, tool, kind, adapter, options in RUNS:
            if chosen is None or name in chosen:
                if tool == "tunesmith" and args.profile:
                    options = {**options, "profile_steps": args.profile}
                rows.append(run(name, tool, kind, adapter, options, data, model, Path(tmp) / "runs"))
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    n_params = parameters(model)
    result = {"machine": machine(), "matmul_peak_gflops": peaks, "model": "SmolLM2-135M-Instruct", "parameters": n_params,
              "examples": args.examples, "hyperparameters": {**COMMON, "lr": LR, "epochs": 1, "schedule": "constant"},
              "rows": rows, "failed": failed, "summary": summarise(rows, n_params, peaks["bf16"])}
    out = args.out or BENCH / "results" / f"speed{'-profile' if args.profile else ''}-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(rows, out.with_suffix(".png"))
    print_table(result)


def print_table(result: dict) -> None:
    print("| run | real tokens/s | peak RSS (MiB) | held-out loss | MFU (bf16 peak) | train s | steps |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        loss = f"{r['heldout_loss']:.4f}" if "heldout_loss" in r else "–"
        print(f"| {r['name']} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {loss} | {r.get('mfu', 0):.0%} "
              f"| {r['train_seconds']:.0f} | {r['steps']} |")
    for group, g in result["summary"].items():
        line = (f"{group}: {g['tunesmith']} vs {g['trl_fastest']}: {g['speed_ratio']:.2f}x tokens/s, "
                f"{g['rss_ratio']:.2f}x peak RSS")
        for pair, ratio in g.get("loss_ratios", {}).items():
            line += f", held-out loss {pair} {ratio:.3f}x"
        if "mfu_packed" in g:
            line += f", packed MFU {g['mfu_packed']:.0%}"
        print(line)


if __name__ == "__main__":
    main()
