"""`tunesmith quickstart`: the whole job on embedded defaults, in minutes on a laptop CPU.

Writes the date-extraction task's splits and runs `tunesmith compare` on them: zero- and 3-shot
prompting of the base model, a LoRA run, and the same LoRA run with self-replay, each probed for
forgetting; then prints what it found and where the report is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from tunesmith import atomic, phases
from tunesmith.compare import run_compare
from tunesmith.config import apply_override, validate_config
from tunesmith.provenance import provenance
from tunesmith.tasks.dates import write_splits

MAX_NEW_TOKENS = 16  # an ISO date is 6 tokens; room to see what an untuned model rambles
SHOTS = [0, 3]
REPLAY = 0.25
# Sized so that the whole quickstart, model conversion and the one-time base-model replies included,
# stays well under 10 minutes on a 2-core CPU without native bf16: measured 7.9-8.0 minutes with
# AVX2 kernels in fp32 (a training step costs 2.2x its bf16 cost there), 3.9-4.0 with bf16
# (results/). 40 steps at lr 1.5e-3 scored 96.5% on 200 test examples where 80 at 1e-3 scored 99.5%
# in twice the time; 100 test examples still separate tuning from 3-shot prompting by tens of
# points (a 95% interval of about +-10 points at 50%).
# The forgetting probe asks the first 100 of its 239 questions (80 the base model answers, 20 it
# does not) and a third as many drift prompts, which pays for the noise floor's second base pass.
MAX_STEPS = 40  # per variant
LR = 1.5e-3
TEST_EXAMPLES = 100
PROBE_QUESTIONS = 100


def quickstart_config(workdir: Path, name: str, model: str, max_steps: int, test_limit: int | None) -> dict:
    data = workdir / "data"
    return {
        "name": name,
        "model": model,
        "method": "sft",
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
        "data": {
            "train": [{"path": str(data / "train.jsonl"), "weight": 1.0}],
            "val": str(data / "val.jsonl"),
            "max_length": 256,
        },
        "train": {
            "max_steps": max_steps,
            "batch_size": 8,
            "grad_accum": 1,
            "lr": LR,
            "schedule": "cosine",
            "warmup": 0.05,
            "seed": 0,
            "precision": "auto",
            "log_every": 10,
        },
        "eval": {
            "every": 50,
            "test": str(data / "test.jsonl"),
            "limit": test_limit,
            "max_new_tokens": MAX_NEW_TOKENS,
            "shots": SHOTS,
        },
        "forgetting": {"probe": True, "probe_limit": PROBE_QUESTIONS},
        "output": {"dir": str(workdir / "runs"), "save_every": None, "keep": 1},
        "compare": {"variants": {"lora": {}, "lora-replay": {"forgetting.replay": REPLAY}}},
    }


def _free_name(runs: Path, base: str) -> str:
    """Never overwrite an earlier quickstart run: dates, dates-2, ..."""
    name, n = base, 1
    while (runs / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run_quickstart(
    workdir: Path,
    model: str = "smollm2-135m-instruct",
    max_steps: int = MAX_STEPS,
    test_limit: int | None = None,
    console: Console | None = None,
    out: Console | None = None,
    overrides: list[str] | None = None,
) -> dict:
    console, out = console or Console(stderr=True, soft_wrap=True), out or Console(soft_wrap=True)
    t0 = time.perf_counter()
    name = _free_name(workdir / "runs", "dates")
    tree = quickstart_config(workdir, name, model, max_steps, test_limit)
    for assignment in overrides or []:
        apply_override(tree, assignment)
    cfg = validate_config(tree, "quickstart")  # before anything is written
    splits = write_splits(workdir / "data", n_test=TEST_EXAMPLES)
    config_path = workdir / f"{name}.yaml"
    atomic.write_text(config_path, yaml.safe_dump(tree, sort_keys=False))
    console.print(
        f"[bold]quickstart[/bold]: task data in {splits['train'].parent}, config {config_path} "
        f"(the same as: tunesmith compare {config_path})"
    )
    with phases.collect() as times:
        result = run_compare(cfg, source=str(config_path), console=console)
    report = result.pop("summary")
    minutes = (time.perf_counter() - t0) / 60
    result.update(
        task="dates: extract a date and write it as YYYY-MM-DD",
        model=model,
        total_minutes=round(minutes, 2),
        phases=times,
        provenance=provenance(),
        tables={k: report[k] for k in ("task", "forgetting", "training", "recommendation")},
    )
    atomic.write_text(Path(result["run_dir"]) / "quickstart.json", json.dumps(result, indent=2))
    show(report, out)
    show_phases(times, out)
    out.print(f"total {result['total_minutes']:.1f} min")  # as recorded, so README and terminal agree
    out.print(f"report  {result['report']}  (and report.md beside it; every number from the JSON files it names)")
    out.print(f"runs    {', '.join(result['variants'].values())}")
    return {**result, "report_data": report}


def show(report: dict, out: Console) -> None:
    """The report's headline tables on the terminal."""
    task = Table(title=f"task: {report['primary']} on the test split")
    for col in ("model", report["primary"], "95% CI", "prompt tokens / request", "latency ms / request"):
        task.add_column(col)
    for r in report["task"]:
        task.add_row(
            r["label"],
            f"{r['score']:.1%}",
            f"{r['lo']:.1%} – {r['hi']:.1%}",
            f"{r['prompt_tokens']:.0f}",
            f"{r['latency_ms']:.0f}",
        )
    out.print(task)
    if report["forgetting"]:
        f = Table(title="forgetting: general QA and drift, base vs tuned")
        for col in ("model", "QA base", "QA tuned", "change (95% CI)", "verdict", "drift NLL increase"):
            f.add_column(col)
        for r in report["forgetting"]:
            f.add_row(
                r["label"],
                f"{r['qa_base']:.1%}",
                f"{r['qa_tuned']:.1%}",
                f"{r['qa_change'] * 100:+.1f} ({r['qa_change_lo'] * 100:+.1f} to {r['qa_change_hi'] * 100:+.1f})",
                r.get("verdict", "–"),
                f"{r['drift_increase']:+.3f}",
            )
        out.print(f)
        f0 = report["forgetting"][0]
        if "floor_qa" in f0:
            out.print(
                f"noise floor: the base model at batch {f0['floor_batch_sizes'][0]} and {f0['floor_batch_sizes'][1]} "
                f"answers {f0['floor_qa_flipped']} of {f0['qa_items']} questions differently ({f0['floor_qa']:.1%})"
            )
    out.print(report["recommendation"]["text"])
    for line in report["recommendation"].get("details", []):
        out.print(f"  {line}")


def show_phases(times: list[dict], out: Console) -> None:
    """Where the quickstart's time went, phase by phase."""
    table = Table(title="time by phase")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for t in times:
        table.add_row(t["phase"], f"{t['seconds']:.1f}")
    out.print(table)
