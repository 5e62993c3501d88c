"""The training loop: one for every method, adapter and precision.

`fit` owns the optimisation mechanics (accumulation, precision, clipping, schedule, validation,
checkpoints, resume, logging); the method owns what a batch's loss is. The step reads top to
bottom in `_train_step`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from tunesmith import atomic
from tunesmith.config import RunConfig
from tunesmith.data.batch import Batch
from tunesmith.data.collate import feature_length
from tunesmith.data.packing import pack_features
from tunesmith.engine import checkpoint, distributed
from tunesmith.engine.distributed import (Ranks, clip_gradients, shard_model, share, sum_gradients, sum_metrics,
                                          sum_scalars)
from tunesmith.engine.anchors import WeightAnchor
from tunesmith.engine.method import Method
from tunesmith.engine.logbook import PLAN, MetricsLog, TrainProgress
from tunesmith.runtime.precision import autocast, device, hold_frozen_weights_in_bf16, resolve_precision
from tunesmith.engine.profile import StepProfiler
from tunesmith.engine.sampler import EpochSampler
from tunesmith.engine.schedule import build_optimizer
from tunesmith.engine.stop import StopRequest
from tunesmith.engine.watched_score import BestWeights, EarlyStop
from tunesmith.errors import RunFailed, Stopped, UserError
from tunesmith.model.fused_lora import restore_lora, use_fused_lora
from tunesmith.model.peft_wrapping import unwrap
from tunesmith.model.quantize import is_quantized
from tunesmith.model.segment_attention import exact_path_note, restore_attention, use_segment_attention, uses_segments


@dataclass
class TrainData:
    """Encoded features of every training source, in source order, and validation features."""

    features: list[dict]
    source_sizes: list[int]
    weights: list[float]
    val: list[dict] = field(default_factory=list)


@dataclass
class FitResult:
    steps: int
    loss: float
    val_loss: float | None
    tokens: int
    seconds: float
    precision: str
    stopped_early: dict | None = None  # {"step", "reason"} when eval.early_stopping ended the run
    best: dict | None = None  # {"metric", "value", "step"} of the weights output.keep_best made final


def total_steps(cfg: RunConfig, sampler: EpochSampler) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * sampler.batches_per_epoch() / cfg.train.grad_accum))


def _batch_stream(sampler: EpochSampler, epoch: int, index: int):
    """Batches (as example indices) from a data position onwards, with the position after each."""
    while True:
        batches = sampler.batches(epoch)
        for i in range(index, len(batches)):
            nxt = (epoch, i + 1) if i + 1 < len(batches) else (epoch + 1, 0)
            yield batches[i], nxt
        epoch, index = epoch + 1, 0


def _batch_features(batch: list, features: list[dict], pack_length: int | None) -> list[dict]:
    """The features of a batch of example indices, or of a batch of packed rows."""
    if pack_length is None:
        return [features[i] for i in batch]
    return [pack_features([features[i] for i in row]) for row in batch]


CPU_TOKENS_PER_PASS = 1024  # bench/README.md: as fast as 2048 or 4096 with a third less memory


def pass_budget(configured: int | None, dev: torch.device) -> int | None:
    if configured is None:
        return CPU_TOKENS_PER_PASS if dev.type == "cpu" else None
    return configured or None  # 0: no limit


def split_by_tokens(batch: list, lengths: list[int], budget: int | None) -> list[list]:
    """The batch (example indices, or packed rows of them) in consecutive parts whose padded size
    (rows x longest row) stays within `budget` tokens; a longer single row is a part of its own.
    The engine accumulates the parts into one optimizer step: the same gradient, with activation
    memory and tensor sizes bounded (on a CPU, tensors over 32 MB are mapped fresh from the OS and
    page-faulted on every step)."""
    if budget is None:
        return [batch]
    size = [sum(lengths[i] for i in row) if isinstance(row, list) else lengths[row] for row in batch]
    parts, current, longest = [], [], 0
    for row, n in zip(batch, size):
        if current and (len(current) + 1) * max(longest, n) > budget:
            parts.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, n)
    return parts + [current]


def rank_passes(batch: list, lengths: list[int], budget: int | None, ranks: Ranks) -> list[tuple[list, bool]]:
    """This rank's passes over its share of a global batch, as (part, ghost): as many as the rank
    with the most, so that collectives line up; a ghost pass repeats a part with weight zero."""
    shares = [share(batch, Ranks(r, ranks.world)) for r in range(ranks.world)]
    every = [split_by_tokens(mine, lengths, budget) if mine else [] for mine in shares]
    parts, most = every[ranks.rank], max(len(p) for p in every)
    filler = parts[0] if parts else batch[:1]
    return [(p, False) for p in parts] + [(filler, True)] * (most - len(parts))


def _to(batch: dict, dev: torch.device) -> dict:
    """The batch's tensors on `dev`, in place: what a method writes into its batch while computing
    the loss (sampled replies, their token count) stays with the batch the loop holds."""
    batch.update({k: v.to(dev) for k, v in batch.items() if torch.is_tensor(v)})
    return batch


def evaluate_loss(model, method, tokenizer, features: list[dict], batch_size: int, precision: str, dev) -> dict:
    """Mean loss per item (token for SFT) over `features`, without gradients."""
    was_training = model.training
    model.eval()
    ranks = distributed.current()
    mine = share(features, ranks)  # each rank its share; the sums are added over ranks
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    most = math.ceil(len(share(features, Ranks(0, ranks.world))) / batch_size)  # rank 0's share is the largest
    batches += [None] * (most - len(batches))  # as many forward passes on every rank (FSDP gathers in each)
    loss_sum, items, metric_sums = 0.0, 0, {}
    with torch.no_grad():
        for chunk in batches:
            batch = _to(method.collate(chunk or features[:1], tokenizer), dev)
            with autocast(precision, dev):
                method.rollout(model, batch)
                loss, metrics = method.loss(model, batch)
            if chunk is None:
                continue
            loss_sum += float(loss)
            items += batch["n_items"]
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + v
    model.train(was_training)
    loss_sum, items = sum_scalars([loss_sum, items], ranks)
    metric_sums = sum_metrics(metric_sums, ranks)
    out = {"val_loss": loss_sum / max(1, items)}
    out.update({f"val_{k}": v / max(1, items) for k, v in metric_sums.items()})
    return out


def fit(model, tokenizer, method, data: TrainData, cfg: RunConfig, run_dir: Path, *, resume: bool = False,
        console: Console | None = None, quiet: bool = False, trackers=None, scorer=None, on_record=None) -> FitResult:
    """Train `model` as `cfg` says; `trackers` (engine/trackers/, rank 0's) get every logged record;
    `scorer(model) -> {"val_<metric>": value}` scores generated replies every eval.generate_every steps;
    `on_record(step, record)` sees each logged record and may raise to end the run there (a sweep's pruner)."""
    kept = training_paths(model)
    try:
        return _fit(model, tokenizer, method, data, cfg, run_dir, resume, console, quiet, trackers, scorer, on_record)
    finally:
        restore_paths(model, kept)


def training_paths(model) -> tuple:
    """The model's training forward: attention per sequence (training batches say where sequences
    are) and LoRA's update fused into one matmul; returns what `restore_paths` puts back."""
    return use_segment_attention(unwrap(model)), use_fused_lora(model)


def restore_paths(model, kept: tuple) -> None:
    attention, fused = kept
    restore_lora(fused)
    restore_attention(unwrap(model), attention)


def _fit(model, tokenizer, method, data: TrainData, cfg: RunConfig, run_dir: Path, resume: bool,
         console: Console | None, quiet: bool, trackers=None, scorer=None, on_record=None) -> FitResult:
    console = console or Console(stderr=True, soft_wrap=True)
    dev = device()
    precision = resolve_precision(cfg.train.precision, dev)
    ranks = distributed.current()  # (train() quiets the console of ranks other than 0)
    _check_watching(cfg, data, ranks, scorer)
    if ranks.parallel and cfg.train.distributed == "fsdp" and not is_quantized(model):
        model.to(dev)
        layers = shard_model(model, dev, precision)  # (one dtype per layer: no bf16 base next to fp32 adapters)
        console.print(f"fsdp: {layers} decoder layers sharded over {ranks.world} processes")
        model.train()
    else:
        ready_to_train(model, precision, dev)
    torch.manual_seed(cfg.train.seed)
    lengths = [feature_length(f) for f in data.features]
    exact_note = exact_path_note(unwrap(model).config, lengths) if uses_segments(unwrap(model)) else None
    if exact_note:
        console.print(exact_note)
    budget = pass_budget(cfg.train.max_tokens_per_pass, dev)
    pack_length = cfg.data.max_length if cfg.data.packing else None
    sampler = EpochSampler(data.source_sizes, data.weights, lengths, cfg.train.batch_size, cfg.train.seed, pack_length)
    total = total_steps(cfg, sampler)
    if ranks.main:  # what the run will take, for whoever watches it (the service's progress and ETA)
        atomic.write_text(run_dir / PLAN, json.dumps({"total_steps": total, "batches_per_epoch": sampler.batches_per_epoch()}))
    optimizer, scheduler, note = build_optimizer(model, cfg.train, total, cfg.adapter.lora_plus_ratio)
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = WeightAnchor(params, cfg.forgetting.l2sp) if cfg.forgetting.l2sp else None  # before resume: theta_0

    ckpt_root = run_dir / "checkpoints"
    state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "elapsed": 0.0, "window": _empty_window()}
    if resume:
        found = checkpoint.list_checkpoints(ckpt_root)
        if found:
            state = checkpoint.load(found[-1], model, optimizer, scheduler)
            console.print(f"resumed from {found[-1]} (step {state['step']})")
    if trackers is not None:
        trackers.start(state["step"])
    watch = cfg.eval.early_stopping
    early = EarlyStop(watch.metric, watch.patience, watch.min_delta, state.get("early_stop")) if watch else None
    if early is not None:
        state["early_stop"] = early.state  # (the same dict: checkpoints carry the count)
    best = BestWeights(run_dir, cfg.output.keep_best, resume, write=ranks.main) if cfg.output.keep_best else None
    stopped_early = None
    log = MetricsLog(run_dir / "metrics.jsonl" if ranks.main else None, resume_step=state["step"],  # rank 0 writes
                     trackers=trackers)
    # what a sampling method drew and how it scored it, token by token, on logged steps (rank 0's own)
    samples = MetricsLog(run_dir / "samples.jsonl" if ranks.main and method.logs_samples else None,
                         resume_step=state["step"])
    stream = _batch_stream(sampler, state["epoch"], state["batch"])
    last_loss, val_loss = float("nan"), None
    t_window = time.perf_counter()
    t_start = time.perf_counter() - state["elapsed"]
    profiler = StepProfiler(cfg.train.profile_steps if ranks.main else None, run_dir / "profile.txt", state["step"])

    # a method may take several optimizer steps on one batch (online RL reusing its sampled replies)
    steps_per_batch, micro, reuses_left = method.steps_per_batch, [], 0
    with StopRequest() as stop, TrainProgress(console, total, state["step"], quiet=quiet) as progress:
        while state["step"] < total:
            if reuses_left == 0:
                micro, reuses_left = [], steps_per_batch
                for _ in range(cfg.train.grad_accum):
                    batch, (state["epoch"], state["batch"]) = next(stream)
                    for part, ghost in rank_passes(batch, lengths, budget, ranks):
                        collated = method.collate(_batch_features(part, data.features, pack_length), tokenizer)
                        if method.logs_samples:
                            collated["samples"] = []  # filled by the method's loss (one list, shared by copies)
                        micro.append({**collated, "ghost": True} if ghost else collated)
            fresh = reuses_left == steps_per_batch  # a batch's first step samples its rollout
            reuses_left -= 1
            profiler.before_step(state["step"] + 1)
            totals = _train_step(model, method, micro, params, optimizer, scheduler, cfg, precision, dev, anchor, ranks,
                                 fresh)
            state["step"] += 1
            step = state["step"]
            profiler.after_step(step, totals["tokens"])
            state["tokens"] += totals["tokens"]
            if totals["skipped"]:
                _skip_step(state, cfg, ckpt_root, console)
            else:
                _add_to_window(state["window"], totals)

            do_val = bool(data.val) and (step == total or (cfg.eval.every is not None and step % cfg.eval.every == 0))
            do_gen = scorer is not None and (step == total or step % cfg.eval.generate_every == 0)
            if step % cfg.train.log_every == 0 or step in (1, total) or do_val or do_gen:
                now = time.perf_counter()
                record = _window_record(state, sampler, scheduler, now - t_window, now - t_start)
                if do_val:
                    record.update(evaluate_loss(model, method, tokenizer, data.val, cfg.train.batch_size, precision, dev))
                    val_loss = record["val_loss"]
                if do_gen:
                    record.update(_generated_scores(model, scorer, precision, dev))
                last_loss = record["loss"]
                log.write(record)
                for b in (b for b in micro if not b.get("ghost")):
                    for row in b.get("samples", []):
                        samples.write({"step": step, **row})
                if on_record is not None:
                    on_record(step, record)
                progress.update(step, record)
                state["window"] = _empty_window()
                t_window = time.perf_counter()
                if best is not None and (do_val if best.metric == "val_loss" else do_gen):
                    best.offer(step, record, model)
                if early is not None and (do_val if early.metric == "val_loss" else do_gen) and step < total:
                    reason = early.update(step, record)
                    if reason:
                        stopped_early = {"step": step, "reason": reason}
                        console.print(f"early stopping at step {step} of {total}: {reason}")
            else:
                progress.update(step)
            if stopped_early:
                break
            stopping = _stop_agreed(stop, ranks)  # SIGTERM / Ctrl-C: checkpoint here and end, resumable
            if stopping or (cfg.output.save_every and step % cfg.output.save_every == 0 and step < total):
                state["elapsed"] = time.perf_counter() - t_start
                saved = checkpoint.save(ckpt_root, step, model, optimizer, scheduler, state, cfg.output.keep, write=ranks.main)
            if stopping:
                log.close()
                samples.close()
                raise Stopped(f"{stop.signal or 'a signal to another process'}: stopped after step {step} of {total}; "
                              f"checkpoint {saved or ckpt_root}; continue with --resume")
    profiler.finish()
    log.close()
    samples.close()
    seconds = time.perf_counter() - t_start
    kept = best.restore(model) if best is not None else None
    if kept:
        console.print(f"keep_best: the final model is step {kept['step']}'s ({kept['metric']} {kept['value']:.4g})")
    return FitResult(state["step"], last_loss, val_loss, state["tokens"], seconds, precision, stopped_early, kept)


def _check_watching(cfg: RunConfig, data: TrainData, ranks: Ranks, scorer) -> None:
    """Scores during training need validation data, and generation runs in one process."""
    asked = [k for k, on in (("eval.generate_every", cfg.eval.generate_every), ("eval.early_stopping",
             cfg.eval.early_stopping), ("output.keep_best", cfg.output.keep_best)) if on]
    if asked and not data.val:
        raise UserError(f"{asked[0]}: needs validation data; set data.val or data.val_fraction")
    if cfg.eval.generate_every and ranks.parallel:
        raise UserError("eval.generate_every: scoring generated replies during training runs in one process; "
                        "train without torchrun, or watch val_loss")
    if cfg.eval.generate_every and scorer is None:
        raise RuntimeError("eval.generate_every is set but no scorer was given to fit()")


def _generated_scores(model, scorer, precision: str, dev) -> dict:
    """The scorer's val_<metric> means on the model as it is now; training resumes untouched (mode, RNG)."""
    import random

    python_rng = random.getstate()
    model.eval()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad(), \
                autocast(precision, dev):
            return scorer(unwrap(model))
    finally:
        model.train()
        random.setstate(python_rng)


def ready_to_train(model, precision: str, dev) -> None:
    """On the device (a quantized base already is), an adapter's frozen base in bf16 when the run
    computes in bf16, in training mode."""
    if not is_quantized(model):
        model.to(dev)
        if precision == "bf16" and hasattr(model, "peft_config"):  # an adapter's frozen base
            hold_frozen_weights_in_bf16(model)
    model.train()


def backward(model, method: Method, batch: Batch, precision: str, dev, scale: float, fresh: bool = True
             ) -> tuple[float, dict]:
    """One pass: the method's summed loss on `batch` (after its rollout where the batch is `fresh`,
    not a reused one), its gradient divided by `scale` added to the parameters' (accumulated until
    `update`); returns the loss and the method's metrics."""
    batch = _to(batch, dev)
    with autocast(precision, dev):
        if fresh:
            with torch.no_grad():
                method.rollout(model, batch)
        loss_sum, metrics = method.loss(model, batch)
    if batch.get("ghost"):  # passes line up across ranks; this one adds nothing
        (loss_sum * 0).backward()
        return 0.0, {}
    (loss_sum / scale).backward()
    return float(loss_sum.detach()), metrics


def forward_only(model, method: Method, batch: Batch, precision: str, dev) -> tuple[float, dict]:
    """The method's summed loss on `batch` (after its rollout) and its metrics, with no gradient."""
    batch = _to(batch, dev)
    with torch.no_grad(), autocast(precision, dev):
        method.rollout(model, batch)
        loss_sum, metrics = method.loss(model, batch)
    return float(loss_sum), metrics


def update(params: list[torch.Tensor], optimizer, max_norm: float | None, loss_finite: bool = True) -> tuple[float, bool]:
    """Clip the accumulated gradients to `max_norm` (None: no clip), step the optimizer unless the
    loss or the gradients are not finite, and clear them; returns (gradient norm, skipped)."""
    grad_norm = clip_gradients(params, max_norm if max_norm is not None else float("inf"))
    skipped = not (loss_finite and math.isfinite(grad_norm))  # the same on every rank: both are sums
    if not skipped:  # a NaN or inf would poison every weight it touched: this step changes nothing
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped


def _train_step(model, method: Method, micro: list[Batch], params, optimizer, scheduler, cfg: RunConfig, precision: str,
                dev, anchor=None, ranks: Ranks = Ranks(), fresh: bool = True) -> dict:
    """One optimizer step over this rank's passes of `grad_accum` global batches, normalised over
    all their items on every rank; returns the step's totals over all ranks."""
    counted = [b for b in micro if not b.get("ghost")]
    items = sum_scalars([sum(b["n_items"] for b in counted)], ranks)[0]
    n_items = max(1, items)
    loss_total, metric_sums = 0.0, {}
    for batch in micro:
        loss, metrics = backward(model, method, batch, precision, dev, n_items, fresh)
        loss_total += loss
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + v
    sum_gradients(params, ranks)
    loss_total, tokens = sum_scalars([loss_total, sum(b["n_tokens"] for b in counted)], ranks)
    metric_sums = sum_metrics(metric_sums, ranks)
    if anchor is not None:  # L2-SP: per step, not per item, so it is added after normalisation (and summation)
        metric_sums["l2sp"] = anchor.apply() * n_items  # logged, like every metric, per item
    grad_norm, skipped = update(params, optimizer, cfg.train.max_grad_norm, math.isfinite(loss_total))
    if not skipped:
        scheduler.step()
    return {"loss": loss_total, "items": items, "tokens": int(tokens),
            "metrics": metric_sums, "grad_norm": grad_norm, "skipped": skipped}


def _empty_window() -> dict:
    """Sums over the optimizer steps since the last log line (kept in checkpoints for exact resume)."""
    return {"loss": 0.0, "items": 0, "tokens": 0, "steps": 0, "grad_norm": 0.0, "metrics": {}}


def _skip_step(state: dict, cfg: RunConfig, ckpt_root: Path, console: Console) -> None:
    """A step whose loss or gradients were not finite was not taken; too many end the run, with
    the checkpoints written so far (all from finite steps) kept."""
    state["skipped"] = state.get("skipped", 0) + 1
    limit = cfg.train.max_skipped_steps
    console.print(f"[yellow]step {state['step']}: loss or gradients not finite; step skipped "
                  f"({state['skipped']} of at most {limit})[/yellow]")
    if state["skipped"] > limit:
        found = checkpoint.list_checkpoints(ckpt_root)
        kept = f"last good checkpoint {found[-1]}" if found else "no checkpoint was written yet"
        raise RunFailed(f"training diverged: {state['skipped']} steps with a loss or gradients that are not finite "
                        f"(train.max_skipped_steps: {limit}); {kept}; lower train.lr, set train.max_grad_norm, "
                        "or look for broken examples")


def _stop_agreed(stop: StopRequest, ranks: Ranks) -> bool:
    """Whether to stop now; under torchrun every rank stops at the same step if any was signalled."""
    if not ranks.parallel:
        return stop.requested
    return sum_scalars([1.0 if stop.requested else 0.0], ranks)[0] > 0


def _add_to_window(w: dict, totals: dict) -> None:
    for k in ("loss", "items", "tokens", "grad_norm"):
        w[k] += totals[k]
    w["steps"] += 1
    for k, v in totals["metrics"].items():
        w["metrics"][k] = w["metrics"].get(k, 0.0) + v


def _window_record(state: dict, sampler: EpochSampler, scheduler, window_s: float, elapsed_s: float) -> dict:
    """One metrics.jsonl line: means per item (token) over the window; tokens/s counts real tokens."""
    w = state["window"]
    record = {
        "step": state["step"],
        "epoch": round(state["epoch"] + state["batch"] / max(1, sampler.batches_per_epoch()), 4),
        "loss": w["loss"] / w["items"] if w["items"] else float("nan"),  # nan: every step of the window skipped
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": w["grad_norm"] / w["steps"] if w["steps"] else float("nan"),
        "tokens_per_s": w["tokens"] / max(1e-9, window_s),
        "tokens": state["tokens"],
        "elapsed_s": round(elapsed_s, 3),
    }
    record.update({k: v / max(1, w["items"]) for k, v in w["metrics"].items()})
    if state.get("skipped"):
        record["skipped_steps"] = state["skipped"]
    return record
