"""A training run from config to final model: setup -> fit -> save -> evaluate -> report.

Everything that can be wrong with the input (config, data, model reference, run directory) is
checked before the run directory is created, so bad input never leaves a half-written run.
"""

from __future__ import annotations

import json
import shutil

from rich.console import Console

from tunesmith import atomic
from tunesmith.config import RunConfig
from tunesmith.engine import distributed
from tunesmith.engine.checkpoint import list_checkpoints
from tunesmith.engine.loop import FitResult, fit
from tunesmith.engine.logbook import read_metrics
from tunesmith.engine.trackers import Trackers
from tunesmith.errors import UserError
from tunesmith.forgetting.reference import BaseReference
from tunesmith.forgetting.replay import general_prompt_ids
from tunesmith.methods import build_method
from tunesmith.methods.distill_teachers import endpoint_usage, is_endpoint
from tunesmith.methods.reference import ReferenceModel
from tunesmith.model.adapters import count_parameters
from tunesmith.model.load import load_tokenizer, remote_code_trusted, tokenizer_dir
from tunesmith.model.resolve import resolve
from tunesmith.phases import phase
from tunesmith.report.build import write_report
from tunesmith.report.plots import loss_curve
from tunesmith.run.build import base_quantization, build_model
from tunesmith.run.evaluate import (compare_with_teacher, inference_ready, probe_forgetting, score_baselines,
                                    score_endpoint_baselines, score_interpolation, score_tuned, validation_scorer,
                                    write_json)
from tunesmith.run.inputs import load_data, train_sources, validate_inputs
from tunesmith.run.rundir import check_run_dir, save_final
from tunesmith.runtime.memory import return_freed_memory
from tunesmith.runtime.precision import inference_dtype


def train(cfg: RunConfig, *, resume: bool = False, console: Console | None = None, quiet: bool = False,
          base: BaseReference | None = None, on_record=None) -> dict:
    """Train, save, then measure (test score, prompting baselines, forgetting) and report.
    `base` shares one base-model reference across the variants of a comparison; `on_record(step,
    record)` sees each metrics record as it is logged (a sweep reports to its pruner there)."""
    if cfg.trust_remote_code:
        (console or Console(stderr=True, soft_wrap=True)).print(
            f"[yellow]warning: trust_remote_code is on: Python code in the folder of {cfg.model} will run on this "
            "machine with your permissions[/yellow]")
    with remote_code_trusted(cfg.trust_remote_code):
        return _train(cfg, resume=resume, console=console, quiet=quiet, base=base, on_record=on_record)


def _train(cfg: RunConfig, *, resume: bool, console: Console | None, quiet: bool, base: BaseReference | None,
           on_record=None) -> dict:
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
    if cfg.forgetting.kl or cfg.forgetting.self_distill:
        method.kl_anchor = ReferenceModel(model)
    if cfg.forgetting.self_distill:
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
    trackers = Trackers(cfg.report_to, run_dir, cfg.name, cfg.model_dump(mode="json"), cfg.to_yaml(),
                        console) if cfg.report_to and ranks.main else None
    try:
        with phase(f"{cfg.name}: training", console):
            method.prepare(model, tokenizer, data.features + data.val, run_dir, cfg, console)
            result: FitResult = fit(model, tokenizer, method, data, cfg, run_dir, resume=resume, console=console, quiet=quiet,
                                    trackers=trackers, scorer=validation_scorer(cfg, sources[1], tokenizer),
                                    on_record=on_record)
    except BaseException:
        if trackers is not None:
            trackers.abort()
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
        "mitigation": cfg.forgetting.model_dump(include={"replay", "replay_source", "kl", "l2sp", "freeze_layers",
                                                           "self_distill"}),
        "plot": str(plot),
    }
    if result.stopped_early:
        summary["stopped_early"] = result.stopped_early
    if result.best:
        summary["best"] = result.best
    model = inference_ready(model, result.precision)
    if cfg.eval.test:
        console.print("scoring the tuned model on the test split ...")
        with phase(f"{cfg.name}: test split", console):
            summary["test"] = score_tuned(cfg, run_dir, model, tokenizer)
    if cfg.forgetting.probe:
        summary["forgetting"] = probe_forgetting(cfg, run_dir, model, tokenizer, base, console)
    if cfg.forgetting.interpolate:
        summary["interpolation"] = score_interpolation(cfg, run_dir, model, tokenizer, base, console)
    if cfg.method == "distill" and cfg.distill.teacher and is_endpoint(cfg.distill.teacher):  # nothing here to measure
        summary["distill"] = endpoint_usage(run_dir, cfg.distill)
        write_json(run_dir / "eval" / "distill_teacher.json", summary["distill"])
    elif cfg.method == "distill":
        console.print("student vs teacher: size, speed, task score, general QA ...")
        summary["distill"] = compare_with_teacher(cfg, run_dir, model, tokenizer)["ratios"]
    del model
    if cfg.eval.shots:
        summary["baselines"] = score_baselines(cfg, run_dir, base, [e for src in sources[0] for e in src], console)
    if cfg.eval.baselines:
        summary["endpoint_baselines"] = score_endpoint_baselines(cfg, run_dir, [e for src in sources[0] for e in src],
                                                                 console)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["report"] = str(write_report(run_dir, [(cfg.name, run_dir)], baselines_dir=run_dir, primary=cfg.eval.primary))
    if trackers is not None:  # the scores, forgetting and validation at the end; the run's files
        trackers.finish({k: summary[k] for k in ("test", "forgetting", "validation", "baselines", "final_loss")
                         if k in summary}, result.steps,
                        [run_dir / n for n in ("config.yaml", "summary.json", "report.md", "report.html", "report.json")]
                        + sorted((run_dir / "plots").glob("*.png")))
    return summary
