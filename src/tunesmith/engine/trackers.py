"""Experiment trackers a run reports to (`report_to:`), each through its own library: the resolved
config when the run starts, every metrics.jsonl record as it is written, the final scores at the
end. A tracker that cannot start or fails while logging (its package missing, a full disk) warns
once and is dropped: it never stops training.

  tensorboard  event files in RUN_DIR/tensorboard (torch.utils.tensorboard; `pip install tensorboard`),
               scalars as train/KEY (val_ keys as val/KEY) and final/KEY; the config as text. A
               resumed run purges the steps after its checkpoint, so each step is logged once.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

TRACKERS = ("tensorboard",)


def _numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of a (nested) record, flattened to `a/b` names."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class TensorBoard:
    def __init__(self, run_dir: Path, config_yaml: str, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.writer.add_text("config", f"```yaml\n{config_yaml}\n```", global_step=0)

    def log(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in _numbers({k: v for k, v in record.items() if k != "step"}).items():
            name = f"val/{key.removeprefix('val_')}" if key.startswith("val_") else f"train/{key}"
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def finish(self, results: dict, step: int) -> None:
        for key, value in _numbers(results).items():
            self.writer.add_scalar(f"final/{key}", value, global_step=step)
        self.writer.close()


class Trackers:
    """Every tracker of `report_to`, each dropped (with one warning) when it fails."""

    def __init__(self, names: list[str], run_dir: Path, config_yaml: str, console: Console):
        self.names, self.run_dir, self.config_yaml, self.console = names, run_dir, config_yaml, console
        self.active: dict = {}

    def start(self, resume_step: int = 0) -> None:
        """Open each tracker; the training loop calls this once it knows the step it resumes from."""
        kinds = {"tensorboard": TensorBoard}
        for name in self.names:
            try:
                self.active[name] = kinds[name](self.run_dir, self.config_yaml, resume_step)
            except Exception as e:  # noqa: BLE001  (a tracker is never a reason to stop)
                self._drop(name, e)

    def _drop(self, name: str, error: Exception) -> None:
        self.active.pop(name, None)
        hint = f" (pip install {name})" if isinstance(error, ImportError) else ""
        self.console.print(f"[yellow]warning: report_to {name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                           f"{hint}; training goes on without it[/yellow]")

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001
                self._drop(name, e)

    def log(self, record: dict) -> None:
        self._each("log", record)

    def finish(self, results: dict, step: int) -> None:
        self._each("finish", results, step)
        self.active.clear()
