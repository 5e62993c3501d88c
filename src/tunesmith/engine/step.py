"""One optimizer step, read top to bottom in `train_step`: each pass's loss and backward (the method
rolls out first where its batch is new), gradients summed over ranks, normalised over every item
of the step, clipped, and the optimizer stepped unless something was not finite. `forward_only`
and `evaluate_loss` are the same passes without gradients."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.engine import distributed
from tunesmith.engine.distributed import Ranks, clip_gradients, share, sum_gradients, sum_metrics, sum_scalars
from tunesmith.engine.loop_state import StepTotals, add_sums
from tunesmith.runtime.precision import autocast

if TYPE_CHECKING:
    from torch.nn import Module
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.batch import Batch
    from tunesmith.engine.anchors import WeightAnchor
    from tunesmith.engine.method import Method


def to_device(batch: Batch, dev: torch.device) -> Batch:
    """The batch's tensors on `dev`, in place: what a method writes into its batch while computing
    the loss (sampled replies, their token count) stays with the batch the loop holds."""
    batch.update({k: v.to(dev) for k, v in batch.items() if torch.is_tensor(v)})  # type: ignore[typeddict-item]
    return batch


def backward(
    model: Module, method: Method, batch: Batch, precision: str, dev: torch.device, scale: float, fresh: bool = True
) -> tuple[float, dict[str, Any]]:
    """One pass: the method's summed loss on `batch` (after its rollout where the batch is `fresh`,
    not a reused one), its gradient divided by `scale` added to the parameters' (accumulated until
    `update`); returns the loss and the method's metrics."""
    batch = to_device(batch, dev)
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


def forward_only(
    model: Module, method: Method, batch: Batch, precision: str, dev: torch.device
) -> tuple[float, dict[str, Any]]:
    """The method's summed loss on `batch` (after its rollout) and its metrics, with no gradient."""
    batch = to_device(batch, dev)
    with torch.no_grad(), autocast(precision, dev):
        method.rollout(model, batch)
        loss_sum, metrics = method.loss(model, batch)
    return float(loss_sum), metrics


def update(
    params: list[torch.Tensor], optimizer: Optimizer, max_norm: float | None, loss_finite: bool = True
) -> tuple[float, bool]:
    """Clip the accumulated gradients to `max_norm` (None: no clip), step the optimizer unless the
    loss or the gradients are not finite, and clear them; returns (gradient norm, skipped)."""
    grad_norm = clip_gradients(params, max_norm if max_norm is not None else float("inf"))
    skipped = not (loss_finite and math.isfinite(grad_norm))  # the same on every rank: both are sums
    if not skipped:  # a NaN or inf would poison every weight it touched: this step changes nothing
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped


def train_step(
    model: Module,
    method: Method,
    micro: list[Batch],
    params: list[torch.Tensor],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    max_grad_norm: float | None,
    precision: str,
    dev: torch.device,
    anchor: WeightAnchor | None = None,
    ranks: Ranks = Ranks(),
    fresh: bool = True,
) -> StepTotals:
    """One optimizer step over this rank's passes of `grad_accum` global batches, normalised over
    all their items on every rank; returns the step's totals over all ranks. `anchor` (L2-SP)
    pulls the weights towards their start after normalisation."""
    counted = [b for b in micro if not b.get("ghost")]
    items = sum_scalars([sum(b["n_items"] for b in counted)], ranks)[0]
    n_items = max(1, items)
    loss_total, metric_sums = 0.0, dict[str, float]()
    for batch in micro:
        loss, metrics = backward(model, method, batch, precision, dev, n_items, fresh)
        loss_total += loss
        add_sums(metric_sums, metrics)
    sum_gradients(params, ranks)
    loss_total, tokens = sum_scalars([loss_total, sum(b["n_tokens"] for b in counted)], ranks)
    metric_sums = sum_metrics(metric_sums, ranks)
    if anchor is not None:  # L2-SP: per step, not per item, so it is added after normalisation (and summation)
        metric_sums["l2sp"] = anchor.apply() * n_items  # logged, like every metric, per item
    grad_norm, skipped = update(params, optimizer, max_grad_norm, math.isfinite(loss_total))
    if not skipped:
        scheduler.step()
    return StepTotals(loss_total, items, int(tokens), metric_sums, grad_norm, skipped)


def evaluate_loss(
    model: Module,
    method: Method,
    tokenizer: PreTrainedTokenizerBase,
    features: list[dict[str, Any]],
    batch_size: int,
    precision: str,
    dev: torch.device,
) -> dict[str, Any]:
    """Mean loss per item (token for SFT) over `features`, without gradients. A method that samples
    (online RL) draws from the random state as it is and leaves it so: training goes on exactly as
    it would without this evaluation."""
    was_training = model.training
    model.eval()
    ranks = distributed.current()
    mine = share(features, ranks)  # each rank its share; the sums are added over ranks
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    most = math.ceil(len(share(features, Ranks(0, ranks.world))) / batch_size)  # rank 0's share is the largest
    batches += [[]] * (most - len(batches))  # as many forward passes on every rank (FSDP gathers in each)
    loss_sum, metric_sums = 0.0, dict[str, float]()
    items: float = 0  # a count; summed over ranks in fp64
    with draws_untouched(dev):
        for chunk in batches:
            batch = method.collate(chunk or features[:1], tokenizer)
            loss, metrics = forward_only(model, method, batch, precision, dev)
            if not chunk:
                continue
            loss_sum += loss
            items += batch["n_items"]
            add_sums(metric_sums, metrics)
    model.train(was_training)
    loss_sum, items = sum_scalars([loss_sum, items], ranks)
    metric_sums = sum_metrics(metric_sums, ranks)
    out = {"val_loss": loss_sum / max(1, items)}
    out.update({f"val_{k}": v / max(1, items) for k, v in metric_sums.items()})
    return out


@contextmanager
def draws_untouched(dev: torch.device) -> Iterator[None]:
    """torch's (and on CUDA the device's) and Python's random states as they were before the block."""
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)
