"""Watching a validation score during training: early stopping (`eval.early_stopping`) and keeping
the weights of the best evaluation (`output.keep_best`), which become the run's final model.

Lower is better for losses and perplexities, higher for every other score. Both survive a resume:
the early-stopping count is part of the checkpoint's loop state; the best weights are a folder of
the run (RUN_DIR/best): each best is written as trainable-STEP.safetensors, then best.json (written
whole, atomically) points at it, then the previous one is removed, so a kill at any moment leaves a
complete best.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file

from tunesmith import atomic
from tunesmith.engine.checkpoint import load_trainable, trainable_state
from tunesmith.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from torch.nn import Module


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss") or "perplexity" in metric


def improves(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if lower_is_better(metric) else value > best + min_delta


def measured(metric: str, record: dict[str, Any], where: str) -> float:
    """The watched score in an evaluation's record, or a clear error naming those there are."""
    if metric not in record:
        there = ", ".join(sorted(k for k in record if k.startswith("val_")))
        raise UserError(f"{where} {metric}: not among the validation scores this run measures ({there})")
    return float(record[metric])


class EarlyStop:
    """Counts evaluations without an improvement larger than min_delta; `state` goes into checkpoints."""

    def __init__(self, metric: str, patience: int, min_delta: float, state: dict[str, Any] | None = None) -> None:
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.state = dict(state or {"best": None, "best_step": None, "waited": 0})

    def update(self, step: int, record: dict[str, Any]) -> str | None:
        """After an evaluation: why the run stops now, or None."""
        value = measured(self.metric, record, "eval.early_stopping.metric")
        if improves(self.metric, value, self.state["best"], self.min_delta):
            self.state.update(best=value, best_step=step, waited=0)
            return None
        self.state["waited"] += 1
        if self.state["waited"] < self.patience:
            return None
        return (
            f"{self.metric} has not improved by more than {self.min_delta:g} in {self.patience} evaluations "
            f"since step {self.state['best_step']} ({self.state['best']:.4g})"
        )


class BestWeights:
    """The trained weights of the best evaluation so far, kept in RUN_DIR/best."""

    def __init__(self, run_dir: Path, metric: str, resume: bool, write: bool = True) -> None:
        self.folder, self.metric, self.write = run_dir / "best", metric, write
        self.info: dict[str, Any] | None = None
        if resume and (self.folder / "best.json").exists():
            self.info = json.loads((self.folder / "best.json").read_text())
            self.info.pop("file")
        elif write:
            shutil.rmtree(self.folder, ignore_errors=True)

    def offer(self, step: int, record: dict[str, Any], model: Module) -> bool:
        """After an evaluation: keep the model's weights if this is the best score yet."""
        value = measured(self.metric, record, "output.keep_best")
        if not improves(self.metric, value, self.info["value"] if self.info else None):
            return False
        weights = trainable_state(model)  # (every rank gathers; one writes)
        self.info = {"metric": self.metric, "value": value, "step": step}
        if self.write:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"trainable-{step}.safetensors"
            with atomic.replacing(self.folder / name) as tmp:
                save_file({k: v.cpu() for k, v in weights.items()}, str(tmp))
            atomic.write_text(self.folder / "best.json", json.dumps({**self.info, "file": name}))
            for old in self.folder.glob("trainable-*.safetensors"):
                if old.name != name:
                    old.unlink()
        return True

    def restore(self, model: Module) -> dict[str, Any] | None:
        """Load the best weights into `model` (in place); returns what they scored, at which step."""
        if self.info is None:
            return None
        load_trainable(model, self.folder / f"trainable-{self.info['step']}.safetensors")
        return dict(self.info)
