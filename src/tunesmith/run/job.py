"""A training run from config to final model: setup -> fit -> save -> evaluate -> report.

Everything that can be wrong with the input (config, data, model reference, run directory) is
checked before the run directory is created, so bad input never leaves a half-written run.
"""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tunesmith import atomic
from tunesmith.config import RunConfig
from tunesmith.engine import distributed
from tunesmith.engine.checkpoint import list_checkpoints
from tunesmith.engine.logbook import read_metrics
from tunesmith.engine.loop import FitResult, TrainData, fit
from tunesmith.engine.method import Method, Setup
from tunesmith.engine.trackers import Trackers
from tunesmith.errors import UserError
from tunesmith.forgetting.reference import BaseReference
from tunesmith.forgetting.replay import general_prompt_ids
from tunesmith.methods import build_method
from tunesmith.methods.distill_teachers import endpoint_usage, is_endpoint
from tunesmith.methods.reference import ReferenceModel
from tunesmith.methods.sft import SFT
from tunesmith.model.adapters import count_parameters
from tunesmith.model.load import load_tokenizer, remote_code_trusted, tokenizer_dir
from tunesmith.model.resolve import Resolved, resolve
from tunesmith.phases import phase
from tunesmith.report.build import write_report
from tunesmith.report.plots import loss_curve
from tunesmith.run.build import base_quantization, build_model
from tunesmith.run.evaluate import (
    compare_with_teacher,
    inference_ready,
    probe_forgetting,
    score_baselines,
    score_endpoint_baselines,
    score_interpolation,
    score_tuned,
    validation_scorer,
    write_json,
)
from tunesmith.run.inputs import Sources, load_data, train_sources, validate_inputs
from tunesmith.run.rundir import check_run_dir, save_final
from tunesmith.runtime.memory import return_freed_memory
from tunesmith.runtime.precision import inference_dtype


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    base: BaseReference | None = None,
    on_record=None,
) -> dict:
    """Train, save, then measure (test score, prompting baselines, forgetting) and report.
    `base` shares one base-model reference across the variants of a comparison; `on_record(step,
    record)` sees each metrics record as it is logged (a sweep reports to its pruner there)."""
    if cfg.trust_remote_code:
        (console or Console(stderr=True, soft_wrap=True)).print(
            f"[yellow]warning: trust_remote_code is on: Python code in the folder of {cfg.model} will run on this "
            "machine with your permissions[/yellow]"
        )
    with remote_code_trusted(cfg.trust_remote_code):
        return _train(cfg, resume=resume, console=console, quiet=quiet, base=base, on_record=on_record)


@dataclass
class Run:
    """One run as `_prepare` sets it up: what training, saving and measuring work on. `method` and
    `model` are let go (None) once they are no longer needed, so their memory is."""

    cfg: RunConfig
    ranks: distributed.Ranks
    console: Console
    quiet: bool
    resume: bool
    resolved: Resolved
    tokenizer: Any
    base: BaseReference
    sources: Sources
    data: TrainData
    method: Method | None
    model: Any
    head: str  # the method's head, kept to rebuild the model after FSDP
    trainable: int
    run_dir: Path
    trackers: Trackers | None


def _train(
    cfg: RunConfig, *, resume: bool, console: Console | None, quiet: bool, base: BaseReference | None, on_record=None
) -> dict:
    run = _prepare(cfg, resume=resume, console=console, quiet=quiet, base=base)
    result = _fit(run, on_record)
    if run.ranks.parallel and not _gather_on_rank_0(run):
        return {"rank": run.ranks.rank, "steps": result.steps}
    summary = _save(run, result)
    _measure(run, result, summary)
    return _report(run, result, summary)


def _prepare(cfg: RunConfig, *, resume: bool, console: Console | None, quiet: bool, base: BaseReference | None) -> Run:
    """Inputs checked, data encoded by the method, the model built, the run directory started."""
    ranks = distributed.start()  # under torchrun: join the other processes
    console = console or Console(stderr=True, soft_wrap=True)
    if not ranks.main:
        console, quiet = Console(stderr=True, quiet=True), True  # rank 0 speaks and writes for the run
    resume = check_run_dir(cfg, resume)
    distributed.barrier()  # every rank has checked the run directory before rank 0 creates it
    validate_inputs(cfg)
    if cfg.train.return_memory:
        return_freed_memory()
    resolved = resolve(cfg.model)
    if resolved.adapter is not None and cfg.adapter.type != "none":
        # a new adapter trained over a merged one would not load onto the base it names
        raise UserError(
            f"model: {cfg.model} is a LoRA run; merge it first (tunesmith export {cfg.model} --to DIR --merge) "
            "and train on DIR"
        )
    tokenizer = load_tokenizer(tokenizer_dir(resolved))
    method = build_method(cfg.method, cfg)
    base = base or BaseReference(resolved, inference_dtype(cfg.train.precision))
    with phase(f"{cfg.name}: data", console):
        sources = train_sources(cfg, console)
        data = load_data(cfg, method, tokenizer, console, base, sources)
    base.release()  # self-replay may have loaded it; training needs the memory
    model = build_model(cfg, resolved, tokenizer, head=method.head)
    if cfg.forgetting.kl or cfg.forgetting.self_distill:
        method.kl_anchor = ReferenceModel(model)
    if cfg.forgetting.self_distill:
        assert isinstance(method, SFT) and method.self_distill is not None  # the config allows it for sft, distill
        method.self_distill.prompts = general_prompt_ids(cfg.forgetting.self_distill.prompts, tokenizer)
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
    trackers = (
        Trackers(list(cfg.report_to), run_dir, cfg.name, cfg.model_dump(mode="json"), cfg.to_yaml(), console)
        if cfg.report_to and ranks.main
        else None
    )
    return Run(
        cfg,
        ranks,
        console,
        quiet,
        resume,
        resolved,
        tokenizer,
        base,
        sources,
        data,
        method,
        model,
        method.head,
        trainable,
        run_dir,
        trackers,
    )


def _fit(run: Run, on_record) -> FitResult:
    """The method's set-up and the training loop; a run that fails before logging or saving anything
    leaves no directory behind. The method (a teacher, reference or reward model it holds) is let go."""
    cfg, run_dir, method = run.cfg, run.run_dir, run.method
    assert method is not None  # let go only after training
    try:
        with phase(f"{cfg.name}: training", run.console):
            method.prepare(Setup(run.model, run.tokenizer, run.data.features + run.data.val, run_dir, cfg, run.console))
            result = fit(
                run.model,
                run.tokenizer,
                method,
                run.data,
                cfg,
                run_dir,
                resume=run.resume,
                console=run.console,
                quiet=run.quiet,
                trackers=run.trackers,
                scorer=validation_scorer(cfg, run.sources.val, run.tokenizer),
                on_record=on_record,
            )
    except BaseException:
        if run.trackers is not None:
            run.trackers.abort()
        # Failed before a single step was logged or saved: nothing worth keeping, and a leftover
        # directory would only block the corrected rerun.
        if (
            run.ranks.main
            and not run.resume
            and not read_metrics(run_dir / "metrics.jsonl")
            and not list_checkpoints(run_dir / "checkpoints")
        ):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    run.method = None  # not needed to evaluate
    return result


def _gather_on_rank_0(run: Run) -> bool:
    """Under torchrun the trained model is the same on every rank: rank 0 saves, measures and
    reports (a sharded model gathered into a plain one); whether this is rank 0."""
    state = distributed.gather_state(run.model) if run.cfg.train.distributed == "fsdp" else None
    if state is not None:
        # the sharded model (its DTensors, their device mesh) holds the process group: let it go
        # while the group is alive, not in the interpreter's teardown after the group is destroyed
        run.model = None
        gc.collect()
    distributed.stop()
    if not run.ranks.main:
        return False
    if state is not None:
        run.model = build_model(run.cfg, run.resolved, run.tokenizer, head=run.head)
        run.model.load_state_dict(state)
    return True


def _save(run: Run, result: FitResult) -> dict:
    """final/, the loss curve, and the summary of training."""
    cfg, run_dir = run.cfg, run.run_dir
    final = save_final(run.model, run.tokenizer, run_dir, run.resolved.path, base_quantization(cfg))
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
        "validation": next(
            (
                {k.removeprefix("val_"): v for k, v in r.items() if k.startswith("val_")}
                for r in reversed(records)
                if "val_loss" in r
            ),
            {},
        ),
        "trainable_parameters": run.trainable,
        "adapter": cfg.adapter.type,
        "mitigation": cfg.forgetting.model_dump(
            include={"replay", "replay_source", "kl", "l2sp", "freeze_layers", "self_distill"}
        ),
        "plot": str(plot),
    }
    if result.stopped_early:
        summary["stopped_early"] = result.stopped_early
    if result.best:
        summary["best"] = result.best
    return summary


def _measure(run: Run, result: FitResult, summary: dict) -> None:
    """The tuned model scored (test split, forgetting, interpolation, what its method measures),
    then, with the model let go, the prompting baselines; into `summary`."""
    cfg, run_dir, console = run.cfg, run.run_dir, run.console
    model = inference_ready(run.model, result.precision)
    run.model = None
    if cfg.eval.test:
        console.print("scoring the tuned model on the test split ...")
        with phase(f"{cfg.name}: test split", console):
            summary["test"] = score_tuned(cfg, run_dir, model, run.tokenizer)
    if cfg.forgetting.probe:
        summary["forgetting"] = probe_forgetting(cfg, run_dir, model, run.tokenizer, run.base, console)
    if cfg.forgetting.interpolate:
        summary["interpolation"] = score_interpolation(cfg, run_dir, model, run.tokenizer, run.base, console)
    if cfg.method in MEASURED_AFTER_TRAINING:
        key, measure = MEASURED_AFTER_TRAINING[cfg.method]
        summary[key] = measure(cfg, run_dir, model, run.tokenizer, console)
    del model
    examples = [e for src in run.sources.train for e in src]
    if cfg.eval.shots:
        summary["baselines"] = score_baselines(cfg, run_dir, run.base, examples, console)
    if cfg.eval.baselines:
        summary["endpoint_baselines"] = score_endpoint_baselines(cfg, run_dir, examples, console)


def _report(run: Run, result: FitResult, summary: dict) -> dict:
    """summary.json and the report; the trackers get the scores and the run's files."""
    run_dir = run.run_dir
    atomic.write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    summary["report"] = str(
        write_report(run_dir, [(run.cfg.name, run_dir)], baselines_dir=run_dir, primary=run.cfg.eval.primary)
    )
    if run.trackers is not None:  # the scores, forgetting and validation at the end; the run's files
        run.trackers.finish(
            {k: summary[k] for k in ("test", "forgetting", "validation", "baselines", "final_loss") if k in summary},
            result.steps,
            [run_dir / n for n in ("config.yaml", "summary.json", "report.md", "report.html", "report.json")]
            + sorted((run_dir / "plots").glob("*.png")),
        )
    return summary


def _distillation_measures(cfg: RunConfig, run_dir: Path, model, tokenizer, console: Console) -> dict:
    """Student against teacher: size, speed, task score and general QA; a teacher behind an
    endpoint has nothing here to measure, so its usage (calls, tokens) instead."""
    if cfg.distill.teacher and is_endpoint(cfg.distill.teacher):
        usage = endpoint_usage(run_dir, cfg.distill)
        write_json(run_dir / "eval" / "distill_teacher.json", usage)
        return usage
    console.print("student vs teacher: size, speed, task score, general QA ...")
    return compare_with_teacher(cfg, run_dir, model, tokenizer)["ratios"]


# what a method measures after training, beyond every run's scores: method -> (summary key, measure)
MEASURED_AFTER_TRAINING = {"distill": ("distill", _distillation_measures)}
