"""A training run from config to final model: setup -> fit -> save -> evaluate -> plot.

Everything that can be wrong with the input (config, data, model reference, run directory) is
checked before the run directory is created, so bad input never leaves a half-written run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
import yaml
from rich.console import Console

from tunesmith.config import RunConfig, validate_config
from tunesmith.data.layouts import Example
from tunesmith.data.records import load_examples, load_source
from tunesmith.engine.checkpoint import list_checkpoints
from tunesmith.engine.loop import FitResult, TrainData, fit
from tunesmith.engine.logbook import read_metrics
from tunesmith.errors import UserError
from tunesmith.eval.plots import loss_curve
from tunesmith.methods import build_method
from tunesmith.model.adapters import apply_adapter, count_parameters
from tunesmith.model.load import load_base, load_tokenizer, tokenizer_dir
from tunesmith.model.resolve import resolve


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _split_val(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(examples)))
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [e for i, e in enumerate(examples) if i in val_idx]


def _check_run_dir(cfg: RunConfig, resume: bool) -> None:
    run_dir = cfg.run_dir()
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{run_dir}: nothing to resume (no run directory with a config.yaml)")
        before = validate_config(yaml.safe_load(saved.read_text()), str(saved)).model_dump(mode="json")
        now = cfg.model_dump(mode="json")
        changed = sorted(_diff_keys(before, now))
        if changed:
            raise UserError(f"{saved}: --resume needs the same config; changed: {', '.join(changed)}")
        if (run_dir / "final").is_dir():
            raise UserError(f"{run_dir}: run already finished (final/ exists); nothing to resume")
    elif run_dir.exists():
        raise UserError(f"{run_dir}: run directory already exists; continue it with --resume or choose another name (--set name=...)")


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _load(source, cfg: RunConfig, console: Console) -> list[Example]:
    loaded = load_source(source.path, on_error=cfg.data.on_error, **source.options())
    if loaded.problems:
        console.print(f"[yellow]{source.path}: skipped {len(loaded.problems)} bad records (data.on_error: skip); "
                      f"first: {loaded.problems[0]}[/yellow]")
    for e in loaded.examples:
        e.train_on = source.train_on
    return loaded.examples


def load_data(cfg: RunConfig, method, tokenizer, console: Console) -> TrainData:
    """Validate every source, split validation data, and encode it all with the method."""
    sources = [_load(s, cfg, console) for s in cfg.data.train]
    val_examples: list[Example] = []
    if cfg.data.val:
        val_examples = _load(cfg.data.val, cfg, console)
    elif cfg.data.val_fraction:
        split = [_split_val(src, cfg.data.val_fraction, cfg.train.seed) for src in sources]
        sources = [train for train, _ in split]
        val_examples = [e for _, val in split for e in val]
    features, sizes = [], []
    for src in sources:
        kept = [f for f in (method.features(e, tokenizer) for e in src) if f is not None]
        features += kept
        sizes.append(len(kept))
    val = [f for f in (method.features(e, tokenizer) for e in val_examples) if f is not None]
    if not features:
        raise UserError(f"{cfg.data.train[0].path}: no trainable examples after encoding (all longer than data.max_length={cfg.data.max_length}?)")
    truncated, dropped = getattr(method, "truncated", 0), getattr(method, "dropped", 0)
    if truncated or dropped:
        console.print(f"[yellow]note: data.max_length={cfg.data.max_length}: {truncated} examples truncated, "
                      f"{dropped} left out (data.truncation: {cfg.data.truncation})[/yellow]")
    return TrainData(features, sizes, [s.weight for s in cfg.data.train], val)


def build_model(cfg: RunConfig, resolved):
    model = load_base(resolved.path, torch.float32)
    if resolved.adapter is not None:  # continue from a LoRA run: its adapter becomes part of the base
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter).merge_and_unload()
    seed_everything(cfg.train.seed)
    return apply_adapter(model, cfg.adapter)


def save_final(model, tokenizer, run_dir: Path, base_path: Path) -> Path:
    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "peft_config"):
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = str(base_path)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.rename(tmp, final)
    return final


def train(cfg: RunConfig, *, resume: bool = False, console: Console | None = None, quiet: bool = False) -> dict:
    console = console or Console(stderr=True, soft_wrap=True)
    _check_run_dir(cfg, resume)
    if cfg.eval.test:
        load_examples(cfg.eval.test)  # validate now, not after an hour of training
    resolved = resolve(cfg.model)
    if resolved.adapter is not None and cfg.adapter.type != "none":
        # a new adapter trained over a merged one would not load onto the base it names
        raise UserError(f"model: {cfg.model} is a LoRA run; merge it first (tunesmith export {cfg.model} --to DIR --merge) "
                        "and train on DIR")
    tokenizer = load_tokenizer(tokenizer_dir(resolved))
    method = build_method(cfg.method, cfg)
    data = load_data(cfg, method, tokenizer, console)
    model = build_model(cfg, resolved)
    trainable, total = count_parameters(model)

    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    console.print(
        f"[bold]{cfg.name}[/bold]: {cfg.method} on {cfg.model}, adapter {cfg.adapter.type}, "
        f"{trainable:,} of {total:,} parameters trained, {len(data.features)} train / {len(data.val)} val examples"
    )
    try:
        result: FitResult = fit(model, tokenizer, method, data, cfg, run_dir, resume=resume, console=console, quiet=quiet)
    except BaseException:
        # Failed before a single step was logged or saved: nothing worth keeping, and a leftover
        # directory would only block the corrected rerun.
        if not resume and not read_metrics(run_dir / "metrics.jsonl") and not list_checkpoints(run_dir / "checkpoints"):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    final = save_final(model, tokenizer, run_dir, resolved.path)
    records = read_metrics(run_dir / "metrics.jsonl")
    plot = loss_curve(records, run_dir / "plots" / "loss.png", title=f"{cfg.name}: {cfg.method}, {cfg.adapter.type}")
    summary = {
        "run_dir": str(run_dir),
        "final": str(final),
        "steps": result.steps,
        "final_loss": result.loss,
        "val_loss": result.val_loss,
        "tokens": result.tokens,
        "train_seconds": round(result.seconds, 1),
        "precision": result.precision,
        "trainable_parameters": trainable,
        "plot": str(plot),
    }
    if cfg.eval.test:
        from tunesmith.eval.task import exact_match

        if hasattr(model, "merge_and_unload"):  # saved already; merged weights generate faster
            model = model.merge_and_unload()
        if result.precision == "bf16":
            model.to(torch.bfloat16)
        model.eval()
        scores = exact_match(model, tokenizer, cfg.eval.test, limit=cfg.eval.limit, max_new_tokens=cfg.eval.max_new_tokens,
                             batch_size=cfg.eval.batch_size, predictions_path=run_dir / "eval" / "test_predictions.jsonl")
        (run_dir / "eval" / "test.json").write_text(json.dumps(scores, indent=2))
        summary["test"] = scores
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
