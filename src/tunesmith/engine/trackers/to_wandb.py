"""report_to: wandb, through the wandb client: offline run files in RUN_DIR/wandb unless WANDB_MODE
says online (then `wandb login` or WANDB_API_KEY as usual); `wandb sync RUN_DIR/wandb/offline-run-*`
uploads an offline run later. A resumed run continues the same W&B run id (RUN_DIR/wandb/run-id)."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any, Literal, cast

from tunesmith import atomic
from tunesmith.engine.trackers.common import RunInfo, finals, scalars

WandbMode = Literal["online", "offline", "disabled", "shared"]

if TYPE_CHECKING:
    from pathlib import Path


class WandB:
    def __init__(self, run: RunInfo) -> None:
        import wandb

        self.wandb = wandb
        folder = run.run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run-id"
        run_id = id_file.read_text().strip() if run.resume_step and id_file.exists() else uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "tunesmith",
            name=run.name,
            id=run_id,
            resume="allow",
            dir=str(run.run_dir),
            config=run.config,
            mode=cast("WandbMode", os.environ.get("WANDB_MODE") or "offline"),  # wandb checks the value
            settings=wandb.Settings(silent=True, console="off"),
        )
        atomic.write_text(id_file, run_id)
        self.name = run.name

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def finish(self, results: dict[str, Any], step: int, files: list[Path]) -> None:
        self.run.summary.update(finals(results))
        if files:
            artifact = self.wandb.Artifact(f"{self.name}-results", type="run-results")
            for f in files:
                artifact.add_file(str(f), name=f"plots/{f.name}" if f.parent.name == "plots" else f.name)
            self.run.log_artifact(artifact)
        self.run.finish()

    def abort(self) -> None:
        self.run.finish(exit_code=1)
