"""A training run from config to final model: setup -> fit -> save -> evaluate -> report.

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

from tunesmith import atomic
from tunesmith.config import RunConfig, validate_config
from tunesmith.data.layouts import Example
from tunesmith.data.records import load_examples, load_source
from tunesmith.engine import distributed
from tunesmith.engine.checkpoint import list_checkpoints
from tunesmith.engine.loop import FitResult, TrainData, fit
from tunesmith.engine.logbook import read_metrics
from tunesmith.errors import UserError
from tunesmith.eval.plots import loss_curve
from tunesmith.engine.memory import return_freed_memory
from tunesmith.engine.precision import device, inference_dtype, resolve_precision
from tunesmith.eval.metrics import load_user_metric
from tunesmith.evaluation import compare_with_teacher, inference_ready, probe_forgetting, score_baselines, score_tuned
from tunesmith.forgetting.reference import BaseReference
from tunesmith.forgetting.replay import replay_examples, replay_weight
from tunesmith.methods import build_method
from tunesmith.methods.reference import ReferenceModel
from tunesmith.model.adapters import apply_adapter, can_merge, count_parameters, freeze_lower_layers
from tunesmith.model.load import (is_reward_checkpoint, load_base, load_tokenizer, quiet_transformers,
                                  remote_code_trusted, tokenizer_dir)
from tunesmith.model.resolve import resolve
from tunesmith.phases import phase
from tunesmith.report.build import write_report


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _split_val(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(examples)))
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [e for i, e in enumerate(examples) if i in val_idx]


def _never_started(run_dir: Path) -> bool:
    """No run directory, or one a run killed before its config was written left behind."""
    return not run_dir.exists() or all(atomic.is_temp_of(p, "config.yaml") for p in run_dir.iterdir())


def _check_run_dir(cfg: RunConfig, resume: bool) -> bool:
    """Whether the run continues from its run directory (else it starts from the beginning)."""
    run_dir = cfg.run_dir()
    if _never_started(run_dir):
        return False  # also under --resume: the same command restarts a preempted job, even one killed this early
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{run_dir}: nothing to resume (no config.yaml in the run directory)")
        before = validate_config(yaml.safe_load(saved.read_text()), str(saved)).model_dump(mode="json")
        now = cfg.model_dump(mode="json")
        changed = sorted(_diff_keys(before, now))
        if changed:
            raise UserError(f"{saved}: --resume needs the same config; changed: {', '.join(changed)}")
        if (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file():
            raise UserError(f"{run_dir}: run already finished (its report is written); nothing to resume")
        # final/ but no report: stopped while evaluating; the steps after the last checkpoint are
        # trained again (the same weights: resuming is exact), then the measurements and the report
        return True
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
    if loaded.unpreferred:
        console.print(f"{source.path}: {loaded.unpreferred} labelled pairs left out (judged tie or both bad)")
    for e in loaded.examples:
        e.train_on = source.train_on
    return loaded.examples


def train_sources(cfg: RunConfig, console: Console) -> tuple[list[list[Example]], list[Example]]:
    """Every training source's examples, and the validation examples (a file, or split off)."""
    sources = [_load(s, cfg, console) for s in cfg.data.train]
    val_examples: list[Example] = []
    if cfg.data.val:
        val_examples = _load(cfg.data.val, cfg, console)
    elif cfg.data.val_fraction:
        split = [_split_val(src, cfg.data.val_fraction, cfg.train.seed) for src in sources]
        sources = [train for train, _ in split]
        val_examples = [e for _, val in split for e in val]
    return sources, val_examples


def load_data(cfg: RunConfig, method, tokenizer, console: Console, base: BaseReference,
              sources: tuple[list[list[Example]], list[Example]]) -> TrainData:
    """Encode the training sources (from `train_sources`) and validation data with the method, and
    add replay data (self-replay draws on `base`)."""
    sources, val_examples = sources
    features, sizes = [], []
    for src in sources:
        kept = [f for f in (method.features(e, tokenizer) for e in src) if f is not None]
        features += kept
        sizes.append(len(kept))
    val = [f for f in (method.features(e, tokenizer) for e in val_examples) if f is not None]
    if not features:
        raise UserError(f"{cfg.data.train[0].path}: no trainable examples after encoding (all longer than data.max_length={cfg.data.max_length}?)")
    truncated, dropped = method.truncated, method.dropped
    if truncated or dropped:
        console.print(f"[yellow]note: data.max_length={cfg.data.max_length}: {truncated} examples truncated, "
                      f"{dropped} left out (data.truncation: {cfg.data.truncation})[/yellow]")
    weights = [s.weight for s in cfg.data.train]
    if cfg.forgetting.replay:
        replay = [f for f in (method.features(e, tokenizer) for e in replay_examples(cfg.forgetting.replay_source, base)) if f]
        if not replay:
            raise UserError(f"forgetting.replay_source {cfg.forgetting.replay_source}: no trainable replay examples")
        for f in replay:
            f["anchor"] = True  # what KL anchoring applies to
        weights.append(replay_weight(cfg.forgetting.replay, sum(w * n for w, n in zip(weights, sizes)), len(replay)))
        features += replay
        sizes.append(len(replay))
        console.print(f"replay: {len(replay)} examples from {cfg.forgetting.replay_source}, "
                      f"{cfg.forgetting.replay:.0%} of each epoch (source weight {weights[-1]:.2f})")
    return TrainData(features, sizes, weights, val)


def base_quantization(cfg: RunConfig) -> dict | None:
    """QLoRA's quantization settings (compute in the run's precision); None for other types."""
    if cfg.adapter.type != "qlora":
        return None
    from tunesmith.model.quantize import settings

    return settings(cfg.adapter, inference_dtype(cfg.train.precision))


def build_model(cfg: RunConfig, resolved, tokenizer=None, head: str = "causal"):
    """The model to train: the base (a language model, or with `head="score"` a scalar-head
    reward model), a LoRA run's adapter folded in, then the configured adapter on top."""
    model = load_base(resolved.path, torch.float32, base_quantization(cfg), head=head)
    if head == "score":
        if tokenizer is not None:
            model.config.pad_token_id = tokenizer.pad_token_id  # saved with it: plain transformers can batch it
        if not is_reward_checkpoint(resolved):  # a new head starts at zero: every score 0, first loss ln 2
            torch.nn.init.zeros_(model.score.weight)
    if resolved.adapter is not None:  # continue from an adapter run: its adapter becomes part of the base
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if not can_merge(model):
            raise UserError(f"model: {resolved.adapter.parent}: a {model.active_peft_config.peft_type.value.lower()} "
                            "adapter cannot fold into the base to train on; start from its base model")
        model = model.merge_and_unload()
    seed_everything(cfg.train.seed)
    if cfg.train.gradient_checkpointing:
        # non-reentrant: gradients reach adapter weights even when the inputs need none
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.x; older: gradient_…
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_adapter(model, cfg.adapter, tokenizer, task_type="SEQ_CLS" if head == "score" else "CAUSAL_LM")
    freeze_lower_layers(model, cfg.forgetting.freeze_layers)
    return model


def validate_inputs(cfg: RunConfig) -> None:
    """Files named for after training are checked now, not after an hour of it."""
    if cfg.eval.test:
        load_examples(cfg.eval.test)
    if cfg.eval.shots and not cfg.eval.test:
        raise UserError("eval.shots: the prompting baselines are scored on eval.test; set it")
    if cfg.forgetting.text:
        load_examples(cfg.forgetting.text)
    if cfg.forgetting.replay and cfg.forgetting.replay_source != "self":
        load_examples(cfg.forgetting.replay_source)
    if cfg.eval.metric:
        load_user_metric(cfg.eval.metric)
    if cfg.adapter.type == "qlora":
        from tunesmith.model.quantize import require_bitsandbytes

        require_bitsandbytes()


def save_final(model, tokenizer, run_dir: Path, base_path: Path, quantization: dict | None = None) -> Path:
    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "peft_config"):
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = str(base_path)
    with quiet_transformers():
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if quantization is not None:  # what the adapter was trained on top of
        from tunesmith.model.quantize import write_settings

        write_settings(tmp, quantization)
    if final.exists():  # resumed after its evaluation was interrupted: the same weights again
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def train(cfg: RunConfig, *, resume: bool = False, console: Console | None = None, quiet: bool = False,
          base: BaseReference | None = None) -> dict:
    """Train, save, then measure (test score, prompting baselines, forgetting) and report.
    `base` shares one base-model reference across the variants of a comparison."""
    if cfg.trust_remote_code:
        (console or Console(stderr=True, soft_wrap=True)).print(
            f"[yellow]warning: trust_remote_code is on: Python code in the folder of {cfg.model} will run on this "
            "machine with your permissions[/yellow]")
    with remote_code_trusted(cfg.trust_remote_code):
        return _train(cfg, resume=resume, console=console, quiet=quiet, base=base)


def _train(cfg: RunConfig, *, resume: bool, console: Console | None, quiet: bool, base: BaseReference | None) -> dict:
    ranks = distributed.start()  # under torchrun: join the other processes
    console = console or Console(stderr=True, soft_wrap=True)
    if not ranks.main:
        console, quiet = Console(stderr=True, quiet=True), True  # rank 0 speaks and writes for the run
    resume = _check_run_dir(cfg, resume)
    distributed.barrier()  # every rank has checked the run directory before rank 0 creates it
    validate_inputs(cfg)
    if cfg.train.return_memory:
        return_freed_memory()
    resolved = resolve(cfg.model)
    if resolved.adapter is not None and cfg.adapter.type != "none":
        # a new adapter trained over a merged one would not load onto the base it names
        raise UserError(f"model: {cfg.model} is a LoRA run; merge it first (tunesmith export {cfg.model} --to DIR --merge) "
                        "and train on DIR")
    tokenizer = load_tokenizer(tokenizer_dir(resolved))
    method = build_method(cfg.method, cfg)
    base = base or BaseReference(resolved, inference_dtype(cfg.train.precision))
    with phase(f"{cfg.name}: data", console):
        sources = train_sources(cfg, console)
        data = load_data(cfg, method, tokenizer, console, base, sources)
    base.release()  # self-replay may have loaded it; training needs the memory
    head = method.head  # kept: the method is released before evaluation
    model = build_model(cfg, resolved, tokenizer, head=head)
    if cfg.forgetting.kl:
        method.kl_anchor = ReferenceModel(model)
    trainable, total = count_parameters(model)

    run_dir = cfg.run_dir()
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "config.yaml", cfg.to_yaml())  # never half a config for --resume to read
    console.print(
        f"[bold]{cfg.name}[/bold]: {cfg.method} on {cfg.model}, adapter {cfg.adapter.type}, "
        f"{trainable:,} of {total:,} parameters trained, {len(data.features)} train / {len(data.val)} val examples"
        + (f", {ranks.world} processes ({cfg.train.distributed})" if ranks.parallel else "")
    )
    try:
        with phase(f"{cfg.name}: training", console):
            method.prepare(model, tokenizer, data.features + data.val, run_dir, cfg, console)
            result: FitResult = fit(model, tokenizer, method, data, cfg, run_dir, resume=resume, console=console, quiet=quiet)
    except BaseException:
        # Failed before a single step was logged or saved: nothing worth keeping, and a leftover
        # directory would only block the corrected rerun.
        if (ranks.main and not resume and not read_metrics(run_dir / "metrics.jsonl")
                and not list_checkpoints(run_dir / "checkpoints")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    del method  # a teacher, reference or reward model it holds is not needed to evaluate
    if ranks.parallel:  # the trained model is the same on every rank: rank 0 saves, measures and reports
        state = distributed.gather_state(model) if cfg.train.distributed == "fsdp" else None
        distributed.stop()
        if not ranks.main:
            return {"rank": ranks.rank, "steps": result.steps}
        if state is not None:  # the sharded model is done: the same weights in a plain one
            model = build_model(cfg, resolved, tokenizer, head=head)
            model.load_state_dict(state)
    final = save_final(model, tokenizer, run_dir, resolved.path, base_quantization(cfg))
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
        "method": cfg.method,
        # the last validation: loss, and what the method measures (preference accuracy, reward, ...)
        "validation": next(({k.removeprefix("val_"): v for k, v in r.items() if k.startswith("val_")}
                            for r in reversed(records) if "val_loss" in r), {}),
        "trainable_parameters": trainable,
        "adapter": cfg.adapter.type,
        "mitigation": cfg.forgetting.model_dump(include={"replay", "replay_source", "kl", "l2sp", "freeze_layers"}),
        "plot": str(plot),
    }
    model = inference_ready(model, result.precision)
    if cfg.eval.test:
        console.print("scoring the tuned model on the test split ...")
        with phase(f"{cfg.name}: test split", console):
            summary["test"] = score_tuned(cfg, run_dir, model, tokenizer)
    if cfg.forgetting.probe:
        summary["forgetting"] = probe_forgetting(cfg, run_dir, model, tokenizer, base, console)
    if cfg.method == "distill":
        console.print("student vs teacher: size, speed, task score, general QA ...")
        summary["distill"] = compare_with_teacher(cfg, run_dir, model, tokenizer)["ratios"]
    del model
    if cfg.eval.shots:
        summary["baselines"] = score_baselines(cfg, run_dir, base, [e for src in sources[0] for e in src], console)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["report"] = str(write_report(run_dir, [(cfg.name, run_dir)], baselines_dir=run_dir, primary=cfg.eval.primary))
    return summary
