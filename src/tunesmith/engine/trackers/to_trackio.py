"""report_to: trackio, through its client: its local store (TRACKIO_DIR, default
~/.cache/huggingface/trackio), viewed with `trackio show`. A resumed run continues the latest trackio
run of the same name in the project."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunesmith.engine.trackers.common import RunInfo, finals, scalars

if TYPE_CHECKING:
    from pathlib import Path


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """trackio prints its banners to stdout, which is the CLI's JSON output: keep them out."""
    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args, **kwargs)


class Trackio:
    def __init__(self, run: RunInfo) -> None:
        import trackio

        self.trackio, self.name = trackio, run.name
        self.run = _quietly(
            trackio.init,
            project=os.environ.get("TRACKIO_PROJECT") or "tunesmith",
            name=run.name,
            config=run.config,
            resume="allow" if run.resume_step else "never",
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def finish(self, results: dict[str, Any], step: int, files: list[Path]) -> None:
        self.run.log(finals(results), step=step)
        if files:
            artifact = self.trackio.Artifact(f"{self.name}-results", type="run-results")
            for f in files:
                artifact.add_file(str(f), name=f"plots/{f.name}" if f.parent.name == "plots" else f.name)
            _quietly(self.run.log_artifact, artifact)
        _quietly(self.trackio.finish)  # trackio's own finish also forgets the run (else its exit hook ends it again)

    def abort(self) -> None:
        _quietly(self.trackio.finish)
