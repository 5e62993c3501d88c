"""The training loop: one for every method, adapter and precision.

`fit` owns the optimisation mechanics (accumulation, precision, clipping, schedule, validation,
checkpoints, resume, logging); the method owns what a batch's loss is. It reads in three parts:
`_set_up` (the model ready, the data's order, the optimizer, a resumed state, the logs: a
`FitSession`), `_run` (draw a step's passes, take the step: `engine/step.py`) and `_log_and_watch`
(a logged step's record, validation, scores, early stopping, the best weights). The loop's state
is a `LoopState` (`engine/loop_state.py`), which checkpoints store.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from tunesmith import atomic
from tunesmith.data.collate import feature_length
from tunesmith.engine import checkpoint, distributed
from tunesmith.engine.anchors import WeightAnchor
from tunesmith.engine.distributed import Ranks, shard_model, sum_scalars
from tunesmith.engine.logbook import PLAN, MetricsLog, TrainProgress
from tunesmith.engine.loop_state import LoopState, Window
from tunesmith.engine.passes import batch_features, batch_stream, pass_budget, rank_passes
from tunesmith.engine.profile import StepProfiler
from tunesmith.engine.sampler import EpochSampler
from tunesmith.engine.schedule import build_optimizer
from tunesmith.engine.step import draws_untouched, evaluate_loss, train_step
from tunesmith.engine.stop import StopRequest
from tunesmith.engine.watched_score import BestWeights, EarlyStop
from tunesmith.errors import RunFailed, Stopped, UserError
from tunesmith.model.fused_lora import restore_lora, use_fused_lora
from tunesmith.model.gated_mlp import restore_mlp, use_lean_mlp
from tunesmith.model.peft_wrapping import unwrap
from tunesmith.model.quantize import is_quantized
from tunesmith.model.segment_attention import exact_path_note, restore_attention, use_segment_attention, uses_segments
from tunesmith.runtime.memory import own_mapped_tensors
from tunesmith.runtime.precision import autocast, device, hold_frozen_weights_in_bf16, resolve_precision

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from torch.nn import Module
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config import RunConfig
    from tunesmith.data.batch import Batch
    from tunesmith.engine.method import Method
    from tunesmith.engine.trackers import Trackers

    Scorer = Callable[[Any], dict[str, float]]  # the unwrapped model -> {"val_<metric>": mean}
    OnRecord = Callable[[int, dict[str, Any]], None]  # (step, logged record); may raise to end the run


@dataclass
class TrainData:
    """Encoded features of every training source, in source order, and validation features."""

    features: list[dict[str, Any]]
    source_sizes: list[int]
    weights: list[float]
    val: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitResult:
    steps: int
    loss: float
    val_loss: float | None
    tokens: int
    seconds: float
    precision: str
    stopped_early: dict[str, Any] | None = None  # {"step", "reason"} when eval.early_stopping ended the run
    best: dict[str, Any] | None = None  # {"metric", "value", "step"} of the weights output.keep_best made final


@dataclass
class FitSession:
    """What the loop works with, set up once by `_set_up`, and what it has seen so far."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    method: Method
    data: TrainData
    cfg: RunConfig
    console: Console
    precision: str
    dev: torch.device
    ranks: Ranks
    lengths: list[int]  # tokens of each training feature
    budget: int | None  # tokens per pass (None: no limit)
    pack_length: int | None  # data.max_length when packing
    sampler: EpochSampler
    total: int  # optimizer steps the run takes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.Tensor]  # the trained parameters
    anchor: WeightAnchor | None  # forgetting.l2sp
    ckpt_root: Path
    state: LoopState
    log: MetricsLog  # metrics.jsonl (rank 0 writes)
    samples: MetricsLog  # samples.jsonl: what a sampling method drew, on logged steps
    profiler: StepProfiler
    early: EarlyStop | None
    best: BestWeights | None
    scorer: Scorer | None
    on_record: OnRecord | None
    t_start: float = 0.0  # this process's clock, less the elapsed seconds of a resumed run
    t_window: float = 0.0  # when the current log window began
    last_loss: float = float("nan")
    val_loss: float | None = None
    stopped_early: dict[str, Any] | None = None


def total_steps(cfg: RunConfig, sampler: EpochSampler) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    assert cfg.train.epochs is not None  # the config asks for max_steps or epochs
    return max(1, math.ceil(cfg.train.epochs * sampler.batches_per_epoch() / cfg.train.grad_accum))


def fit(
    model: Module,
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    data: TrainData,
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    trackers: Trackers | None = None,
    scorer: Scorer | None = None,
    on_record: OnRecord | None = None,
) -> FitResult:
    """Train `model` as `cfg` says; `trackers` (engine/trackers/, rank 0's) get every logged record;
    `scorer(model) -> {"val_<metric>": value}` scores generated replies every eval.generate_every steps;
    `on_record(step, record)` sees each logged record and may raise to end the run there (a sweep's pruner)."""
    kept = training_paths(model)
    try:
        session = _set_up(
            model,
            tokenizer,
            method,
            data,
            cfg,
            run_dir,
            resume=resume,
            console=console or Console(stderr=True, soft_wrap=True),
            trackers=trackers,
            scorer=scorer,
            on_record=on_record,
        )
        return _run(session, quiet)
    finally:
        restore_paths(model, kept)


def training_paths(model: Module) -> tuple[Any, ...]:
    """The model's training forward: attention per sequence (training batches say where sequences
    are), LoRA's update fused into one matmul, and gated MLPs that keep two tensors for the
    backward pass instead of three; returns what `restore_paths` puts back."""
    return use_segment_attention(unwrap(model)), use_fused_lora(model), use_lean_mlp(model)


def restore_paths(model: Module, kept: tuple[Any, ...]) -> None:
    attention, fused, lean = kept
    restore_mlp(lean)
    restore_lora(fused)
    restore_attention(unwrap(model), attention)


def _set_up(
    model: Module,
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    data: TrainData,
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    console: Console,
    trackers: Trackers | None,
    scorer: Scorer | None,
    on_record: OnRecord | None,
) -> FitSession:
    """The model on its device in the training precision (sharded under FSDP), the data's order,
    the optimizer and schedule, the state a checkpoint left (on `resume`), and the logs."""
    dev = device()
    precision = resolve_precision(cfg.train.precision, dev)
    ranks = distributed.current()  # (train() quiets the console of ranks other than 0)
    _check_watching(cfg, data, ranks, scorer)
    _place_model(model, cfg, precision, dev, ranks, console)
    torch.manual_seed(cfg.train.seed)
    lengths = [feature_length(f) for f in data.features]
    exact_note = exact_path_note(unwrap(model).config, lengths) if uses_segments(unwrap(model)) else None
    if exact_note:
        console.print(exact_note)
    pack_length = cfg.data.max_length if cfg.data.packing else None
    sampler = EpochSampler(data.source_sizes, data.weights, lengths, cfg.train.batch_size, cfg.train.seed, pack_length)
    total = total_steps(cfg, sampler)
    if ranks.main:  # what the run will take, for whoever watches it (the service's progress and ETA)
        atomic.write_text(
            run_dir / PLAN, json.dumps({"total_steps": total, "batches_per_epoch": sampler.batches_per_epoch()})
        )
    optimizer, scheduler, note = build_optimizer(model, cfg.train, total, cfg.adapter.lora_plus_ratio)
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    anchor = WeightAnchor(params, cfg.forgetting.l2sp) if cfg.forgetting.l2sp else None  # before resume: theta_0

    ckpt_root = run_dir / "checkpoints"
    state = _resumed(ckpt_root, model, optimizer, scheduler, console) if resume else LoopState()
    if trackers is not None:
        trackers.start(state.step)
    watch = cfg.eval.early_stopping
    return FitSession(
        model=model,
        tokenizer=tokenizer,
        method=method,
        data=data,
        cfg=cfg,
        console=console,
        precision=precision,
        dev=dev,
        ranks=ranks,
        lengths=lengths,
        budget=pass_budget(cfg.train.max_tokens_per_pass, dev),
        pack_length=pack_length,
        sampler=sampler,
        total=total,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        anchor=anchor,
        ckpt_root=ckpt_root,
        state=state,
        log=MetricsLog(run_dir / "metrics.jsonl" if ranks.main else None, resume_step=state.step, trackers=trackers),
        samples=MetricsLog(
            run_dir / "samples.jsonl" if ranks.main and method.logs_samples else None, resume_step=state.step
        ),  # rank 0's own draws, token by token
        profiler=StepProfiler(cfg.train.profile_steps if ranks.main else None, run_dir / "profile.txt", state.step),
        early=EarlyStop(watch.metric, watch.patience, watch.min_delta, state.early_stop) if watch else None,
        best=BestWeights(run_dir, cfg.output.keep_best, resume, write=ranks.main) if cfg.output.keep_best else None,
        scorer=scorer,
        on_record=on_record,
    )


def _place_model(
    model: Module, cfg: RunConfig, precision: str, dev: torch.device, ranks: Ranks, console: Console
) -> None:
    """The model on the device in training mode: sharded under FSDP, else ready_to_train."""
    if ranks.parallel and cfg.train.distributed == "fsdp" and not is_quantized(model):
        model.to(dev)
        layers = shard_model(model, dev, precision)  # (one dtype per layer: no bf16 base next to fp32 adapters)
        console.print(f"fsdp: {layers} decoder layers sharded over {ranks.world} processes")
        model.train()
    else:
        ready_to_train(model, precision, dev)


def _resumed(
    ckpt_root: Path, model: Module, optimizer: Optimizer, scheduler: LRScheduler, console: Console
) -> LoopState:
    """The state of the latest checkpoint, with weights, optimizer, schedule and RNG restored; a
    fresh state where there is none yet."""
    found = checkpoint.list_checkpoints(ckpt_root)
    if not found:
        return LoopState()
    state = LoopState.from_json(checkpoint.load(found[-1], model, optimizer, scheduler))
    console.print(f"resumed from {found[-1]} (step {state.step})")
    return state


def _run(s: FitSession, quiet: bool) -> FitResult:
    """Step until the planned steps are taken, early stopping ends the run, or a signal asks to stop
    (a checkpoint, then `Stopped`)."""
    state, cfg = s.state, s.cfg
    stream = batch_stream(s.sampler, state.epoch, state.batch)
    s.t_window = time.perf_counter()
    s.t_start = time.perf_counter() - state.elapsed
    # a method may take several optimizer steps on one batch (online RL reusing its sampled replies)
    steps_per_batch, micro, reuses_left = s.method.steps_per_batch, [], 0
    with StopRequest() as stop, TrainProgress(s.console, s.total, state.step, quiet=quiet) as progress:
        while state.step < s.total:
            if reuses_left == 0:
                micro, reuses_left = _next_passes(s, stream), steps_per_batch
            fresh = reuses_left == steps_per_batch  # a batch's first step samples its rollout
            reuses_left -= 1
            s.profiler.before_step(state.step + 1)
            totals = train_step(
                s.model,
                s.method,
                micro,
                s.params,
                s.optimizer,
                s.scheduler,
                cfg.train.max_grad_norm,
                s.precision,
                s.dev,
                s.anchor,
                s.ranks,
                fresh,
            )
            state.step += 1
            s.profiler.after_step(state.step, totals.tokens)
            state.tokens += totals.tokens
            if totals.skipped:
                _skip_step(state, cfg, s.ckpt_root, s.console)
            else:
                state.window.add(totals)
            _log_and_watch(s, micro, progress)
            if s.stopped_early:
                break
            _checkpoint_or_stop(s, stop)
    s.profiler.finish()
    s.log.close()
    s.samples.close()
    seconds = time.perf_counter() - s.t_start
    kept = s.best.restore(s.model) if s.best is not None else None
    if kept:
        s.console.print(f"keep_best: the final model is step {kept['step']}'s ({kept['metric']} {kept['value']:.4g})")
    return FitResult(state.step, s.last_loss, s.val_loss, state.tokens, seconds, s.precision, s.stopped_early, kept)


def _next_passes(s: FitSession, stream: Iterator[tuple[list[Any], tuple[int, int]]]) -> list[Batch]:
    """This rank's passes of the next `grad_accum` global batches, collated (the data position moves on)."""
    micro: list[Batch] = []
    for _ in range(s.cfg.train.grad_accum):
        batch, (s.state.epoch, s.state.batch) = next(stream)
        for part, ghost in rank_passes(batch, s.lengths, s.budget, s.ranks):
            collated = s.method.collate(batch_features(part, s.data.features, s.pack_length), s.tokenizer)
            if s.method.logs_samples:
                collated["samples"] = []  # filled by the method's loss (one list, shared by copies)
            micro.append({**collated, "ghost": True} if ghost else collated)
    return micro


def _log_and_watch(s: FitSession, micro: list[Batch], progress: TrainProgress) -> None:
    """On a logged step: the window's record with validation loss and generated scores where due,
    to the logs and the progress bar; the best weights offered, early stopping consulted."""
    state, cfg, step = s.state, s.cfg, s.state.step
    do_val = bool(s.data.val) and (step == s.total or (cfg.eval.every is not None and step % cfg.eval.every == 0))
    every_gen = cfg.eval.generate_every
    do_gen = s.scorer is not None and every_gen is not None and (step == s.total or step % every_gen == 0)
    if not (step % cfg.train.log_every == 0 or step in (1, s.total) or do_val or do_gen):
        progress.update(step)
        return
    now = time.perf_counter()
    record = state.record(
        s.sampler.batches_per_epoch(), float(s.scheduler.get_last_lr()[0]), now - s.t_window, now - s.t_start
    )
    if do_val:
        record.update(
            evaluate_loss(s.model, s.method, s.tokenizer, s.data.val, cfg.train.batch_size, s.precision, s.dev)
        )
        s.val_loss = record["val_loss"]
    if do_gen and s.scorer is not None:
        record.update(_generated_scores(s.model, s.scorer, s.precision, s.dev))
    s.last_loss = record["loss"]
    s.log.write(record)
    for b in (b for b in micro if not b.get("ghost")):
        for row in b.get("samples", []):
            s.samples.write({"step": step, **row})
    if s.on_record is not None:
        s.on_record(step, record)
    progress.update(step, record)
    state.window = Window()
    s.t_window = time.perf_counter()
    if s.best is not None and (do_val if s.best.metric == "val_loss" else do_gen):
        s.best.offer(step, record, s.model)
    if s.early is not None and (do_val if s.early.metric == "val_loss" else do_gen) and step < s.total:
        reason = s.early.update(step, record)
        if reason:
            s.stopped_early = {"step": step, "reason": reason}
            s.console.print(f"early stopping at step {step} of {s.total}: {reason}")


def _checkpoint_or_stop(s: FitSession, stop: StopRequest) -> None:
    """A checkpoint every output.save_every steps; on SIGTERM / Ctrl-C (any rank's) a checkpoint
    here and `Stopped`, resumable."""
    step, cfg = s.state.step, s.cfg
    stopping = _stop_agreed(stop, s.ranks)
    saved = None
    if stopping or (cfg.output.save_every and step % cfg.output.save_every == 0 and step < s.total):
        s.state.elapsed = time.perf_counter() - s.t_start
        s.state.early_stop = dict(s.early.state) if s.early is not None else None
        saved = checkpoint.save(
            s.ckpt_root, step, s.model, s.optimizer, s.scheduler, s.state.to_json(), cfg.output.keep, write=s.ranks.main
        )
    if stopping:
        s.log.close()
        s.samples.close()
        raise Stopped(
            f"{stop.signal or 'a signal to another process'}: stopped after step {step} of {s.total}; "
            f"checkpoint {saved or s.ckpt_root}; continue with --resume"
        )


def _check_watching(cfg: RunConfig, data: TrainData, ranks: Ranks, scorer: Scorer | None) -> None:
    """Scores during training need validation data, and generation runs in one process."""
    asked = [
        k
        for k, on in (
            ("eval.generate_every", cfg.eval.generate_every),
            ("eval.early_stopping", cfg.eval.early_stopping),
            ("output.keep_best", cfg.output.keep_best),
        )
        if on
    ]
    if asked and not data.val:
        raise UserError(f"{asked[0]}: needs validation data; set data.val or data.val_fraction")
    if cfg.eval.generate_every and ranks.parallel:
        raise UserError(
            "eval.generate_every: scoring generated replies during training runs in one process; "
            "train without torchrun, or watch val_loss"
        )
    if cfg.eval.generate_every and scorer is None:
        raise RuntimeError("eval.generate_every is set but no scorer was given to fit()")


def _generated_scores(model: Module, scorer: Scorer, precision: str, dev: torch.device) -> dict[str, float]:
    """The scorer's val_<metric> means on the model as it is now; training resumes untouched (mode, RNG)."""
    model.eval()
    try:
        with draws_untouched(dev), torch.no_grad(), autocast(precision, dev):
            return scorer(unwrap(model))
    finally:
        model.train()


def ready_to_train(model: Module, precision: str, dev: torch.device) -> None:
    """On the device (a quantized base already is), an adapter's frozen base in bf16 when the run
    computes in bf16, in training mode. After that cast, what stayed fp32 (embeddings, norms) is
    copied out of the checkpoint's file mapping, so that the fp32 pages the cast read are let go."""
    if not is_quantized(model):
        model.to(dev)
        if precision == "bf16" and hasattr(model, "peft_config") and hold_frozen_weights_in_bf16(model):
            own_mapped_tensors(model)
    model.train()


def _skip_step(state: LoopState, cfg: RunConfig, ckpt_root: Path, console: Console) -> None:
    """A step whose loss or gradients were not finite was not taken; too many end the run, with
    the checkpoints written so far (all from finite steps) kept."""
    state.skipped += 1
    limit = cfg.train.max_skipped_steps
    console.print(
        f"[yellow]step {state.step}: loss or gradients not finite; step skipped "
        f"({state.skipped} of at most {limit})[/yellow]"
    )
    if state.skipped > limit:
        found = checkpoint.list_checkpoints(ckpt_root)
        kept = f"last good checkpoint {found[-1]}" if found else "no checkpoint was written yet"
        raise RunFailed(
            f"training diverged: {state.skipped} steps with a loss or gradients that are not finite "
            f"(train.max_skipped_steps: {limit}); {kept}; lower train.lr, set train.max_grad_norm, "
            "or look for broken examples"
        )


def _stop_agreed(stop: StopRequest, ranks: Ranks) -> bool:
    """Whether to stop now; under torchrun every rank stops at the same step if any was signalled."""
    if not ranks.parallel:
        return stop.requested
    return sum_scalars([1.0 if stop.requested else 0.0], ranks)[0] > 0
