"""What a run tells the person watching it: metrics.jsonl, plan.json (the steps it will take) and a
live progress bar."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Self

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunesmith import atomic

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from tunesmith.engine.trackers import Trackers

PLAN = "plan.json"  # {"total_steps", "batches_per_epoch"}: what a run will take, written before its first step


class MetricsLog:
    """Append-only `metrics.jsonl`, one JSON object per log step (always with `step` and `loss`)."""

    def __init__(self, path: Path | None, resume_step: int | None = None, trackers: Trackers | None = None) -> None:
        """`path` None: a log that writes nothing (ranks other than 0 of a distributed run);
        `trackers` (engine/trackers/) get each record too."""
        self.path, self.file, self.trackers = path, None, trackers
        if path is None:
            return
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if (r := _record(line)) and r["step"] <= resume_step]
            atomic.write_text(path, "".join(line + "\n" for line in kept))  # a kill leaves the old log, never half
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            if self.trackers is not None:
                self.trackers.log(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _record(line: str) -> dict[str, Any] | None:
    """One log line; None for a blank line or the torn last line of a process killed mid-write."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [r for line in path.read_text().splitlines() if (r := _record(line)) is not None]


class TrainProgress:
    """A rich progress bar (loss, lr, tokens/s, ETA) on a terminal; plain log lines elsewhere."""

    def __init__(self, console: Console, total: int, start: int, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.live = console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        if record is not None:
            info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:.0f} tok/s"
            if "val_loss" in record:
                info += f"  val {record['val_loss']:.4f}"
            self.progress.update(self.task, completed=step, info=info)
            if not self.live and not self.quiet:
                self.console.print(f"step {step}: {info}", highlight=False)
        else:
            self.progress.update(self.task, completed=step)
