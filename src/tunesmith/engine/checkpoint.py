"""Checkpoints that are never half-written, and that resume a run exactly.

A checkpoint is `checkpoints/step-N/`: trainable weights, optimizer and RNG tensors as
safetensors, everything else as JSON (no pickle, so loading one runs no code); an adapter run's
also holds `adapter/`, that step's adapter as PEFT saves one (served or loaded without resuming). Tensors are
whole even when training shards them (FSDP), so a checkpoint loads on any number of processes. It is written
into a hidden temporary folder and renamed into place; a crash mid-write leaves only the
temporary folder, which the next start removes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunesmith.engine.distributed import full, like
from tunesmith.errors import RunFailed
from tunesmith.model.adapters import save_adapter_folder

if TYPE_CHECKING:
    from pathlib import Path

    from torch.nn import Module
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

PREFIX = "step-"
ADAPTER = "adapter"  # in an adapter run's checkpoint: that step's adapter as PEFT saves one


def trainable_state(model: Module) -> dict[str, torch.Tensor]:
    """Trained weights, whole: a sharded (FSDP) weight is gathered, so every rank calls this."""
    return {n: full(p.detach()).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            tensors[f"state.{idx}.{key}"] = (
                full(value.detach()).contiguous() if torch.is_tensor(value) else torch.tensor(value)
            )
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(optimizer: Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the order state_dict numbers them
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        param = params[int(idx)]
        # moments have the parameter's shape and are laid out as it is (sharded under FSDP); step counts are scalars
        state.setdefault(int(idx), {})[key] = like(value, param) if value.shape == param.shape else value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@dataclass
class Contents:
    """What a checkpoint folder holds: trained weights, optimizer, schedule, the loop's state and
    (`model`, for an adapter run) the adapter folder; the RNG states are read as it is written."""

    weights: dict[str, torch.Tensor]
    opt_tensors: dict[str, torch.Tensor]
    opt_meta: dict[str, Any]
    scheduler: LRScheduler
    state: dict[str, Any]
    model: Module | None = None


def _write(tmp: Path, contents: Contents) -> None:
    c = contents
    save_file(c.weights, tmp / "trainable.safetensors")
    if c.model is not None:
        save_adapter_folder(c.model, c.weights, tmp / ADAPTER)  # the step's model, loadable (and servable) as it is
    rng: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = s
    save_file(c.opt_tensors, tmp / "optimizer.safetensors")
    save_file(rng, tmp / "rng.safetensors")
    py_rng = random.getstate()
    meta = {
        "state": c.state,
        "optimizer": c.opt_meta,
        "scheduler": c.scheduler.state_dict(),
        "python_rng": [py_rng[0], list(py_rng[1]), py_rng[2]],
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    _fsync_tree(tmp)


def write_folder(final: Path, contents: Contents) -> None:
    """Write a checkpoint to `final` whole or not at all: into a temporary sibling, renamed over
    `final` once every file is on disk."""
    tmp = final.parent / f".tmp-{final.name}"
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write(tmp, contents)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_named(final: Path, model: Module, optimizer: Optimizer, scheduler: LRScheduler, state: dict[str, Any]) -> None:
    """The model's trained weights, optimizer, schedule and RNG state, and its adapter folder, at
    `final` (a client loop's named state; a run's checkpoints go through `save`)."""
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    write_folder(final, Contents(trainable_state(model), opt_tensors, opt_meta, scheduler, state, model))


def save(
    ckpt_root: Path,
    step: int,
    model: Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    state: dict[str, Any],
    keep: int,
    write: bool = True,
) -> Path | None:
    """Write checkpoint `step`; in a distributed run every rank calls this (sharded tensors are
    gathered) and only the one with `write` writes."""
    weights = trainable_state(model)
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    if not write:
        return None
    final = ckpt_root / f"{PREFIX}{step}"
    try:
        write_folder(final, Contents(weights, opt_tensors, opt_meta, scheduler, state, model))
    except (OSError, SafetensorError) as e:  # a full disk, a quota, a vanished mount: earlier checkpoints stand
        previous = list_checkpoints(ckpt_root)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        reason = getattr(e, "strerror", None) or str(e).rsplit(": ", 1)[-1]
        raise RunFailed(
            f"{final}: checkpoint could not be written ({reason}); {kept}; make room and continue with --resume"
        ) from None
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path, clean: bool = True) -> list[Path]:
    """Complete checkpoints, oldest first; with `clean`, stale temporary folders are removed (only
    the run itself may clean: for anyone watching a live run, one is a checkpoint being written)."""
    if not ckpt_root.is_dir():
        return []
    for tmp in ckpt_root.glob(f".tmp-{PREFIX}*") if clean else ():
        shutil.rmtree(tmp, ignore_errors=True)
    found = [
        p for p in ckpt_root.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit() and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_trainable(model: Module, file: Path) -> None:
    """Trained weights from a safetensors file into `model`, in place (each rank its shard)."""
    weights = load_file(file)
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"{file}: weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(like(value, params[name]))  # this rank's shard of a sharded weight


def cuda_rng_states(rng: dict[str, Any]) -> list[Any]:
    """The saved per-GPU RNG states in device order (cuda.0, cuda.1, ..., cuda.10: by number, not
    as text, where cuda.10 would come before cuda.2)."""
    return [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]


def load(path: Path, model: Module, optimizer: Optimizer, scheduler: LRScheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG state in place; return the loop state."""
    load_trainable(model, path / "trainable.safetensors")
    meta = json.loads((path / "state.json").read_text())
    _restore_optimizer(optimizer, load_file(path / "optimizer.safetensors"), meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        states = cuda_rng_states(rng)
        if states:
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    state: dict[str, Any] = meta["state"]
    return state
