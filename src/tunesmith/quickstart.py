"""`tunesmith quickstart`: the whole job on embedded defaults, in a few minutes on a laptop CPU.

Writes the date-extraction task's splits, scores the untuned model on the test split, LoRA-tunes
it through the same `train` path every run takes, scores it again and prints what changed and
where everything is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from tunesmith.config import validate_config
from tunesmith.engine.precision import device, resolve_precision
from tunesmith.eval.task import exact_match
from tunesmith.model.load import load_for_inference
from tunesmith.model.resolve import resolve
from tunesmith.tasks.dates import write_splits
from tunesmith.train import train

MAX_NEW_TOKENS = 16  # an ISO date is 6 tokens; room to see what an untuned model rambles


def quickstart_config(workdir: Path, name: str, model: str, max_steps: int, test_limit: int | None) -> dict:
    data = workdir / "data"
    return {
        "name": name,
        "model": model,
        "method": "sft",
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
        "data": {"train": [{"path": str(data / "train.jsonl"), "weight": 1.0}], "val": str(data / "val.jsonl"), "max_length": 256},
        "train": {"max_steps": max_steps, "batch_size": 8, "grad_accum": 1, "lr": 1.0e-3, "schedule": "cosine",
                  "warmup": 0.05, "seed": 0, "precision": "auto", "log_every": 10},
        "eval": {"every": 50, "test": str(data / "test.jsonl"), "limit": test_limit, "max_new_tokens": MAX_NEW_TOKENS},
        "output": {"dir": str(workdir / "runs"), "save_every": 50, "keep": 1},
    }


def _free_name(runs: Path, base: str) -> str:
    """Never overwrite an earlier quickstart run: dates-lora, dates-lora-2, ..."""
    name, n = base, 1
    while (runs / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run_quickstart(workdir: Path, model: str = "smollm2-135m-instruct", max_steps: int = 150,
                   test_limit: int | None = None, console: Console | None = None, out: Console | None = None) -> dict:
    console, out = console or Console(stderr=True, soft_wrap=True), out or Console(soft_wrap=True)
    t0 = time.perf_counter()
    splits = write_splits(workdir / "data")
    name = _free_name(workdir / "runs", "dates-lora")
    tree = quickstart_config(workdir, name, model, max_steps, test_limit)
    cfg = validate_config(tree, "quickstart")
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    console.print(f"[bold]quickstart[/bold]: task data in {splits['train'].parent}, config {config_path}")

    resolved = resolve(model)
    import torch

    dtype = torch.bfloat16 if resolve_precision("auto", device()) == "bf16" else torch.float32
    console.print("scoring the untuned model on the test split ...")
    base_model, tokenizer = load_for_inference(resolved, dtype=dtype)
    base_scores = exact_match(base_model, tokenizer, splits["test"], limit=test_limit, max_new_tokens=MAX_NEW_TOKENS,
                              predictions_path=workdir / "base_predictions.jsonl")
    del base_model
    console.print(f"untuned exact match: {base_scores['exact_match']:.1%}")

    summary = train(cfg, console=console)
    tuned = summary["test"]
    minutes = (time.perf_counter() - t0) / 60
    result = {"task": "dates: extract a date and write it as YYYY-MM-DD", "model": model, "run_dir": summary["run_dir"],
              "untuned": base_scores, "tuned": tuned, "train": {k: summary[k] for k in ("steps", "final_loss", "val_loss", "train_seconds", "precision", "trainable_parameters")},
              "total_minutes": round(minutes, 2)}
    (Path(summary["run_dir"]) / "quickstart.json").write_text(json.dumps(result, indent=2))

    table = Table(title=f"quickstart: {result['task']}")
    for col in ("model", "exact match", "normalized EM", "test examples"):
        table.add_column(col)
    table.add_row(f"{model} (untuned)", f"{base_scores['exact_match']:.1%}", f"{base_scores['normalized_exact_match']:.1%}", str(base_scores["n"]))
    table.add_row(f"+ LoRA r=16, {summary['steps']} steps", f"{tuned['exact_match']:.1%}", f"{tuned['normalized_exact_match']:.1%}", str(tuned["n"]))
    out.print(table)
    run_dir = Path(summary["run_dir"])
    out.print(f"trained {summary['trainable_parameters']:,} parameters for {summary['train_seconds']:.0f}s ({summary['precision']}); total {minutes:.1f} min")
    out.print(f"run directory  {run_dir}")
    out.print(f"  adapter      {run_dir / 'final'}")
    out.print(f"  loss curve   {summary['plot']}")
    out.print(f"  metrics      {run_dir / 'metrics.jsonl'}")
    out.print(f"  predictions  {run_dir / 'eval' / 'test_predictions.jsonl'} (untuned: {workdir / 'base_predictions.jsonl'})")
    out.print(f"next: tunesmith generate {run_dir} --prompt '...'  |  tunesmith export {run_dir} --to model-out --merge")
    return result
