"""tunesmith against TRL, side by side: real tokens/s, peak RSS, held-out loss, MFU; GRPO rollouts.

    make bench        (or: .venv/bin/python bench/speed.py [--examples 64] [--repeats 3] [--only NAME,...])

Every run trains the bundled SmolLM2-135M-Instruct on the same generated variable-length chat
examples (bench/chat_data.py) for one epoch with the same hyperparameters (effective batch 8
examples or 2 packed rows of 1024 tokens, constant learning rate, no warmup, clipping at 1.0,
LoRA r=16 alpha=32 on all linear layers), each in a fresh process so that its peak RSS is its
own. TRL runs in its own environment (bench/.venv-trl, made by `make bench`) in the settings
that are fast and fair for it on a CPU: micro-batches of 1-2 with gradient accumulation, no
gradient checkpointing, padded, padding-free and packed, its base in fp32 and in bf16; the
ratios compare tunesmith's fastest configuration with TRL's fastest, by median.

Each configuration runs `--repeats` times with seeds 0, 1, 2, ..., the configurations
interleaved (every configuration once, then again), so that a slow spell of a shared machine
falls on all of them; medians and ranges are reported, and the spread of held-out losses over
the seeds is the noise band that the two tools' losses are compared against. One piece of code
(bench/heldout.py) measures every result's loss on held-out examples. MFU counts the FLOPs
training on these examples needs (bench/flops.py) against the matmul peak, measured here, of
the precision the run computes in.

Writes bench/results/speed-<machine>.json and .png (with the commit, versions and CPU);
prints Markdown tables. `--table FILE` prints an earlier file's tables. `--profile N` also
profiles N steps of each tunesmith run (`train.profile_steps`), into speed-profile-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import matmul_peak_gflops, provenance

BENCH = Path(__file__).resolve().parent
# TRL's own environment (`make bench`); bench/gpu.sh runs both tools in one python
TRL_PYTHON = Path(os.environ.get("BENCH_TRL_PYTHON") or BENCH / ".venv-trl" / "bin" / "python")
COMMON = {"batch_size": 8, "max_length": 1024}
LR = {"lora": 2e-4, "full": 2e-5}
GRPO = {"group_size": 4, "max_new_tokens": 48, "target_length": 60, "beta": 0.04, "prompts": 16, "batch_prompts": 4}
# TRL on a CPU in fp32 (its bf16 autocast crawls without native bf16; the bf16 base is a separate row); on a GPU
# (bench/gpu.sh sets BENCH_GPU) in bf16 mixed precision, as TRL runs there by default
GPU = bool(os.environ.get("BENCH_GPU"))
TRL = {"bf16": True, "gradient_checkpointing": False} if GPU else {"use_cpu": True, "gradient_checkpointing": False}
MICRO = {"batch_size": 2, "gradient_accumulation_steps": 4}  # TRL: 8 examples a step in micro-batches of 2
PACKED_TRL = {"packing": True, "batch_size": 1, "gradient_accumulation_steps": 2}  # 2 rows of <= 1024 tokens a step
PACKED = {"packing": True, "batch_size": 2}

# name -> (tool, group, settings). Groups compare like with like; "padded" marks unpacked runs.
RUNS = {
    "trl-microbatch": ("trl", "lora", {**TRL, **MICRO}),
    "trl-padding-free": ("trl", "lora", {**TRL, **MICRO, "padding_free": True, "max_length": None}),
    "trl-packed": ("trl", "lora", {**TRL, **PACKED_TRL}),
    "trl-packed-bf16-base": ("trl", "lora", {**TRL, **PACKED_TRL, "base_dtype": "bf16"}),
    "tunesmith": ("tunesmith", "lora", {}),
    "tunesmith-packed": ("tunesmith", "lora", PACKED),
    "trl-full-packed": ("trl", "full", {**TRL, **PACKED_TRL}),
    "tunesmith-full-packed": ("tunesmith", "full", PACKED),
    "trl-dpo": ("trl", "dpo", {**TRL, **MICRO, "padding_free": True}),
    "tunesmith-dpo": ("tunesmith", "dpo", {}),
    "trl-grpo": ("trl", "grpo", {**TRL, "batch_size": GRPO["batch_prompts"] * GRPO["group_size"]}),
    "tunesmith-grpo": ("tunesmith", "grpo", {"batch_size": GRPO["batch_prompts"]}),
}
KIND = {"lora": ("sft", "lora"), "full": ("sft", "full"), "dpo": ("dpo", "lora"), "grpo": ("grpo", "lora")}
TARGETS = {
    "lora": {"speed": 3.0, "rss": 0.6, "mfu_packed": 0.55},
    "full": {"speed": 3.0},
    "dpo": {"speed": 4.0, "rss": 0.5},
    "grpo": {"speed": 3.0},  # end to end: prompt and reply tokens over the whole run, sampling included
}


def peak_gpu() -> dict:
    """The GPU memory this process's tensors took at most (where a GPU computed)."""
    import torch

    return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def tunesmith_run(spec: dict) -> dict:
    """One tunesmith run in this process (its peak RSS is this process's)."""
    from tunesmith.config import validate_config
    from tunesmith.run import train

    options = dict(spec["options"])
    packing = options.pop("packing", False)
    tree = {
        "name": "bench",
        "model": spec["model"],
        "method": spec["kind"],
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
        if spec["adapter"] == "lora"
        else {"type": "none"},
        "data": {"train": spec["data"], "max_length": spec["max_length"], "packing": packing},
        "train": {
            "epochs": 1,
            "batch_size": spec["batch_size"],
            "lr": spec["lr"],
            "schedule": "constant",
            "warmup": 0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "seed": spec["seed"],
            "precision": "auto",
            "log_every": 1,
            **options,
        },
        "output": {"dir": spec["out"], "save_every": None},
    }
    rollout = {"seconds": 0.0, "tokens": 0, "generated": 0}
    if spec["kind"] == "dpo":
        tree["preference"] = {"loss": "sigmoid", "beta": 0.1}
    if spec["kind"] == "grpo":
        g = spec["grpo"]
        tree["rl"] = {
            "rewards": [{"function": "length_penalty", "target_length": g["target_length"]}],
            "group_size": g["group_size"],
            "max_new_tokens": g["max_new_tokens"],
            "beta": g["beta"],
            "temperature": 1.0,
            "top_p": 1.0,
        }
        from tunesmith.methods.grpo import GroupPolicyOptimisation

        sample = GroupPolicyOptimisation._sample

        def timed(self, model, prompts):  # sampling, rewards and reference log-probs, as TRL's
            t = time.perf_counter()
            out = sample(self, model, prompts)
            rollout["seconds"] += time.perf_counter() - t
            rollout["generated"] += int(out["lengths"].sum())
            # prompt and reply tokens of every reply, as TRL's are counted (a group's replies share
            # their prompt in one packed row, so the rows' own tokens would count it once)
            prompt_tokens = sum(len(p["prompt_ids"]) for p in prompts) * self.group_size
            rollout["tokens"] += prompt_tokens + int(out["row_of_token"].numel())
            return out

        GroupPolicyOptimisation._sample = timed
    summary = train(validate_config(tree, "bench"), quiet=True)
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    from importlib import metadata

    profile = Path(summary["run_dir"]) / "profile.txt"
    row = {
        "tool": "tunesmith",
        "tokens": summary["tokens"],
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "train_loss": sum(losses) / len(losses),
        "last_loss": losses[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **peak_gpu(),
        "final": summary["final"],
        "versions": {p: metadata.version(p) for p in ("tunesmith", "transformers", "peft", "torch")},
        **({"profile": profile.read_text()} if profile.is_file() else {}),
    }
    if spec["kind"] == "grpo":
        row["rollout"] = rollout
    return row


def run(name: str, seed: int, data: dict, model: str, workdir: Path, profile: int = 0) -> dict:
    """One run in a fresh process of its tool's environment, with its held-out loss."""
    from heldout import measure

    tool, group, options = RUNS[name]
    if profile and tool == "tunesmith":
        options = {**options, "profile_steps": profile}
    kind, adapter = KIND[group]
    settings = {k: v for k, v in options.items() if k != "batch_size"}
    spec = {
        **COMMON,
        "kind": kind,
        "adapter": adapter,
        "model": model,
        "lr": LR[adapter],
        "options": settings,
        "data": str(data[kind]),
        "out": str(workdir / f"{name}-{seed}"),
        "seed": seed,
        "grpo": GRPO,
        "batch_size": options.get("batch_size", COMMON["batch_size"]),
    }
    args = (
        [str(TRL_PYTHON), str(BENCH / "trl_run.py"), json.dumps(spec)]
        if tool == "trl"
        else [sys.executable, __file__, "--one", json.dumps(spec)]
    )
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    base = {"name": name, "tool": tool, "group": group, "seed": seed, "options": options}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        print(f"bench run {name} seed {seed} failed: {tail}", file=sys.stderr)
        return {**base, "error": tail}
    row = {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        **base,
        "process_seconds": round(time.perf_counter() - t0, 1),
    }
    if kind == "grpo":
        r = row["rollout"]
        row["sampling_tokens_per_s"] = r["generated"] / r["seconds"]
        row["training_tokens_per_s"] = r["tokens"] / (row["train_seconds"] - r["seconds"])
        row["tokens_per_s"] = r["tokens"] / row["train_seconds"]
    else:
        row["tokens_per_s"] = row["tokens"] / row["train_seconds"]
    if kind == "sft":
        row["heldout_loss"] = measure(Path(row["final"]), Path(model), data["heldout"])
    print(
        f"{name} seed {seed}: {row['tokens_per_s']:.0f} tok/s, {row['peak_rss_mib']:.0f} MiB, "
        f"held-out loss {row.get('heldout_loss', float('nan')):.4f}",
        file=sys.stderr,
    )
    return row


def example_lengths(model: str, path: Path) -> list[tuple[int, int]]:
    """(tokens, trained tokens) of every prompt/completion example, through the chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    out = []
    for line in path.read_text().splitlines():
        ex = json.loads(line)
        prompt = tok.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        n_prompt, n = (
            len(tok(prompt, add_special_tokens=False)["input_ids"]),
            len(tok(full, add_special_tokens=False)["input_ids"]),
        )
        out.append((n, n - n_prompt))
    return out


MEASURED = ("tokens_per_s", "peak_rss_mib", "train_seconds", "peak_gpu_mib")  # peak_gpu_mib: where a GPU ran


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(result: dict) -> dict:
    """Per configuration: medians and ranges; per group: tunesmith's fastest against TRL's fastest."""
    rows = result["rows"]
    configs = {}
    for name, (tool, group, options) in RUNS.items():
        mine = [r for r in rows if r["name"] == name]
        if not mine:
            continue
        c = {
            "tool": tool,
            "group": group,
            "options": options,
            "packed": bool(options.get("packing")),
            **{k: spread([r[k] for r in mine]) for k in MEASURED if all(k in r for r in mine)},
        }
        if "heldout_loss" in mine[0]:
            c["heldout_loss"] = spread([r["heldout_loss"] for r in mine])
        if group in result.get("epoch_flops", {}):
            flops, peak = result["epoch_flops"][group]["total"], result["matmul_peak_gflops"][result["precision"]] * 1e9
            c["mfu"] = spread([flops / r["train_seconds"] / peak for r in mine])
        if group == "grpo":
            c.update({k: spread([r[k] for r in mine]) for k in ("sampling_tokens_per_s", "training_tokens_per_s")})
        configs[name] = c
    groups = {}
    for group in KIND:
        ours = {n: c for n, c in configs.items() if c["group"] == group and c["tool"] == "tunesmith"}
        theirs = {n: c for n, c in configs.items() if c["group"] == group and c["tool"] == "trl"}
        if not ours or not theirs:
            continue
        best = max(ours, key=lambda n: ours[n]["tokens_per_s"]["median"])
        trl_best = max(theirs, key=lambda n: theirs[n]["tokens_per_s"]["median"])
        a, b = ours[best], theirs[trl_best]
        g = {
            "tunesmith": best,
            "trl_fastest": trl_best,
            "speed_ratio": a["tokens_per_s"]["median"] / b["tokens_per_s"]["median"],
            "speed_ratio_range": [
                a["tokens_per_s"]["min"] / b["tokens_per_s"]["max"],
                a["tokens_per_s"]["max"] / b["tokens_per_s"]["min"],
            ],
            "rss_ratio": a["peak_rss_mib"]["median"] / b["peak_rss_mib"]["median"],
        }
        if "peak_gpu_mib" in a and "peak_gpu_mib" in b:
            g["gpu_memory_ratio"] = a["peak_gpu_mib"]["median"] / b["peak_gpu_mib"]["median"]
        if "heldout_loss" in a:  # like with like: unpacked with unpacked, packed with packed
            g["loss"] = {}
            for mine_name, mine in ours.items():
                for their_name, their in theirs.items():
                    if mine["packed"] != their["packed"]:
                        continue
                    band = max(
                        mine["heldout_loss"]["max"] - mine["heldout_loss"]["min"],
                        their["heldout_loss"]["max"] - their["heldout_loss"]["min"],
                    )
                    diff = mine["heldout_loss"]["median"] - their["heldout_loss"]["median"]
                    g["loss"][f"{mine_name}/{their_name}"] = {
                        "difference": diff,
                        "seed_band": band,
                        "within": abs(diff) <= band,
                    }
        if group == "grpo":
            for k in ("sampling_tokens_per_s", "training_tokens_per_s"):
                g[k.replace("tokens_per_s", "ratio")] = a[k]["median"] / b[k]["median"]
        packed = [c for c in ours.values() if c["packed"] and "mfu" in c]
        if packed:
            g["mfu_packed"] = packed[0]["mfu"]["median"]
        targets = TARGETS.get(group, {})
        g["targets"] = {}
        if "speed" in targets:
            g["targets"]["speed"] = {"target": targets["speed"], "met": g["speed_ratio"] >= targets["speed"]}
        if "rss" in targets:
            g["targets"]["rss"] = {"target": targets["rss"], "met": g["rss_ratio"] <= targets["rss"]}
        if "mfu_packed" in targets and "mfu_packed" in g:
            g["targets"]["mfu_packed"] = {
                "target": targets["mfu_packed"],
                "met": g["mfu_packed"] >= targets["mfu_packed"],
            }
        if "loss" in g:
            g["targets"]["loss"] = {
                "target": "within the seed band",
                "met": all(v["within"] for v in g["loss"].values()),
            }
        groups[group] = g
    return {"configs": configs, "groups": groups}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = {n: c for n, c in summary["configs"].items() if c["group"] != "grpo"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(configs) + 1.5))
    names = list(configs)
    colors = ["tab:green" if configs[n]["tool"] == "tunesmith" else "tab:gray" for n in names]
    for ax, key, label in (
        (ax1, "tokens_per_s", "real tokens/s (higher is better)"),
        (ax2, "peak_rss_mib", "peak RSS, MiB (lower is better)"),
    ):
        med = [configs[n][key]["median"] for n in names]
        err = [
            [m - configs[n][key]["min"] for n, m in zip(names, med)],
            [configs[n][key]["max"] - m for n, m in zip(names, med)],
        ]
        ax.barh(names, med, xerr=err, color=colors, capsize=3)
        ax.set_xlabel(f"{label}, median and range")
        ax.invert_yaxis()
    ax2.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64, help="training examples (one epoch); DPO pairs: a third of it")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration, seeds 0..N-1, interleaved")
    ap.add_argument("--only", help="comma-separated configuration names (default: all)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        help="profile this many steps of each tunesmith run (the row's "
        "'profile'); profiled steps run slower, so results go to speed-profile-<machine>.json",
    )
    ap.add_argument("--out", type=Path, help="default: bench/results/speed-<machine>.json")
    ap.add_argument("--model", type=Path, help="a model folder instead of the bundled model (bench/gpu_model.py's)")
    ap.add_argument("--model-name", default="SmolLM2-135M-Instruct", help="what the results call --model")
    ap.add_argument("--table", type=Path, help="print the tables of an earlier results file and stop")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        result = json.loads(args.table.read_text())
        print_tables({**result, **summarise(result)})  # today's targets on the file's runs
        return
    if args.one:
        print(json.dumps(tunesmith_run(json.loads(args.one))))
        return
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"--only: unknown configuration {unknown[0]!r} (known: {', '.join(RUNS)})")
    if any(RUNS[n][0] == "trl" for n in names) and not TRL_PYTHON.exists():
        sys.exit(f"{TRL_PYTHON}: missing; `make bench` creates TRL's environment")

    import chat_data
    from flops import Shape, epoch_flops
    from transformers import AutoConfig

    from tunesmith.model.resolve import resolve

    model = str(args.model or resolve("smollm2-135m-instruct").path)
    where = provenance((BENCH,))
    precision = where["machine"]["auto_precision"]
    peaks = {p: matmul_peak_gflops(p) for p in ("bf16", "fp32")}
    print(
        f"matmul peak: bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s; runs compute in {precision}",
        file=sys.stderr,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = chat_data.write(Path(tmp) / "data", args.examples, 32)
        dpo_pairs = (
            Path(tmp) / "data" / "dpo-head.jsonl"
        )  # DPO: fewer pairs (each is two sequences and a reference pass)
        dpo_pairs.write_text("".join(data["dpo"].read_text().splitlines(keepends=True)[: max(8, args.examples // 3)]))
        data["dpo"] = dpo_pairs
        data["grpo"] = Path(tmp) / "data" / "grpo.jsonl"
        data["grpo"].write_text("".join(data["sft"].read_text().splitlines(keepends=True)[: GRPO["prompts"]]))
        shape, lengths = Shape.of(AutoConfig.from_pretrained(model)), example_lengths(model, data["sft"])
        flops = {
            "lora": epoch_flops(shape, lengths, full=False, lora_r=16),
            "full": epoch_flops(shape, lengths, full=True, lora_r=None),
        }
        for seed in range(args.repeats):
            for name in names:
                rows.append(run(name, seed, data, model, Path(tmp) / "runs", args.profile))
    failed = [r for r in rows if "error" in r]
    result = {
        **where,
        "matmul_peak_gflops": peaks,
        "precision": precision,
        "model": args.model_name,
        "examples": args.examples,
        "repeats": args.repeats,
        "real_tokens": sum(n for n, _ in lengths),
        "trained_tokens": sum(c for _, c in lengths),
        "epoch_flops": flops,
        "hyperparameters": {**COMMON, "lr": LR, "epochs": 1, "schedule": "constant", "grpo": GRPO},
        "trl_versions": next((r["versions"] for r in rows if r["tool"] == "trl" and "versions" in r), None),
        "rows": [r for r in rows if "error" not in r],
        "failed": failed,
    }
    result.update(summarise(result))
    out = args.out or BENCH / "results" / f"speed{'-profile' if args.profile else ''}-{where['machine_tag']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print_tables(result)


def print_tables(result: dict) -> None:
    import tables

    print(tables.configs(result))
    print()
    print(tables.targets(result))


if __name__ == "__main__":
    main()
