"""Experiment trackers a run reports to (`report_to:` / `--report-to`), each through its own library,
each optional (`pip install 'tunesmith[mlflow]'`, ...) and local unless configured otherwise:

  tensorboard  event files in RUN_DIR/tensorboard; a resumed run purges the steps after its checkpoint
  mlflow       MLflow's SQLite store RUN_DIR/mlflow.db with artifacts in RUN_DIR/mlflow-artifacts, or
               the server in MLFLOW_TRACKING_URI; experiment MLFLOW_EXPERIMENT_NAME (default tunesmith)
  wandb        offline run files in RUN_DIR/wandb (`wandb sync` uploads them), online when WANDB_MODE
               says so; project WANDB_PROJECT (default tunesmith)
  trackio      trackio's local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio); project
               TRACKIO_PROJECT (default tunesmith)

Each gets the resolved config when the run starts, every metrics.jsonl record as it is written
(train/KEY, val/KEY), and at the end the final scores (final/...: test, forgetting, baselines) and
the run's files (config, summary, report, plots) as artifacts. A tracker that cannot start or fails
while logging warns once and is dropped: it never stops training.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.engine.trackers.common import RunInfo

if TYPE_CHECKING:
    from rich.console import Console

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
_BACKENDS = {
    "tensorboard": "to_tensorboard:TensorBoard",
    "mlflow": "to_mlflow:MLflow",
    "wandb": "to_wandb:WandB",
    "trackio": "to_trackio:Trackio",
}
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb", "trackio": "trackio"}


class Trackers:
    """Every tracker of `report_to`, each dropped (with one warning) when it fails."""

    def __init__(
        self, names: list[str], run_dir: Path, name: str, config: dict[str, Any], config_yaml: str, console: Console
    ) -> None:
        self.names, self.console = list(names), console
        self.info = RunInfo(run_dir=Path(run_dir), name=name, config=config, config_yaml=config_yaml)
        self.active: dict[str, Any] = {}

    def start(self, resume_step: int = 0) -> None:
        """Open each tracker; the training loop calls this once it knows the step it resumes from."""
        self.info.resume_step = resume_step
        for name in self.names:
            module, cls = _BACKENDS[name].split(":")
            try:
                backend = getattr(importlib.import_module(f"tunesmith.engine.trackers.{module}"), cls)
                self.active[name] = backend(self.info)
            except Exception as e:  # noqa: BLE001  (a tracker is never a reason to stop)
                self._drop(name, e)

    def _drop(self, name: str, error: Exception) -> None:
        self.active.pop(name, None)
        hint = f" (pip install {_PACKAGES[name]})" if isinstance(error, ImportError) else ""
        first = str(error).splitlines()[0] if str(error) else ""
        self.console.print(
            f"[yellow]warning: report_to {name}: {type(error).__name__}: {first}{hint}; "
            "training goes on without it[/yellow]"
        )

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001
                self._drop(name, e)

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (it has a `step`)."""
        self._each("log", record)

    def finish(self, results: dict[str, Any], step: int, files: list[Path]) -> None:
        """The final scores (nested dicts of numbers) at `step`, the run's files as artifacts; closes each."""
        self._each("finish", results, step, [f for f in files if f.is_file()])
        self.active.clear()

    def abort(self) -> None:
        """The run failed or was stopped: close each tracker marking the run so (a resume continues it)."""
        self._each("abort")
        self.active.clear()
