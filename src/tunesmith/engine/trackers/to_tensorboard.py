"""report_to: tensorboard, through torch.utils.tensorboard (needs the tensorboard package)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith.engine.trackers.common import RunInfo, finals, scalars

if TYPE_CHECKING:
    from pathlib import Path


class TensorBoard:
    def __init__(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run purges what was logged after its checkpoint, so each step is there once
        self.writer = SummaryWriter(
            str(run.run_dir / "tensorboard"), purge_step=run.resume_step + 1 if run.resume_step else None
        )
        self.writer.add_text("config", f"```yaml\n{run.config_yaml}\n```", global_step=0)

    def log(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=int(record["step"]))
        self.writer.flush()

    def finish(self, results: dict[str, Any], step: int, files: list[Path]) -> None:
        for name, value in finals(results).items():
            self.writer.add_scalar(name, value, global_step=step)
        for f in files:  # the report as text, the plots as images
            if f.suffix == ".md":
                self.writer.add_text(f.stem, f.read_text(encoding="utf-8"), global_step=step)
            elif f.suffix == ".png":
                import numpy as np
                from PIL import Image

                with Image.open(f) as image:
                    self.writer.add_image(
                        f"plots/{f.stem}", np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC"
                    )
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()
