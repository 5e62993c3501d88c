"""Where a job's worker runs: this machine (`local`), a Slurm cluster (`slurm`) or a Ray cluster
(`ray`). The scheduler decides what runs and when; an executor only starts a worker, says how it
is doing, asks it to stop, and finds it again after the service restarts.

The contract every executor keeps (tests/test_executors.py holds it for each):

- `submit(launch)` starts `tunesmith train CONFIG --resume --quiet` in the job's folder with the
  launch's environment and nothing of the service's, its output appended to FOLDER/worker.log,
  and returns a handle (a string the store keeps) that names the worker to this executor even
  after the service restarts.
- `state(handle)` is `pending` (waiting for the cluster), `running`, `ended` (with the exit code
  and, when it was the cluster that ended it, `retry` and the cluster's reason) or `unknown` (the
  cluster could not be asked now; ask again later). Never raises for a handle it gave out.
- `stop(handle)` asks the worker to write a checkpoint and exit (SIGTERM to the training
  processes); a worker still waiting for the cluster is withdrawn.
- `adopt(handle)` after a restart of the service: True when the worker may still be running and
  is watched on (cluster jobs outlive the service), False when it is gone or was stopped now
  (local workers die with the service) and the job is queued again to resume.
- `release(handles)` when the service stops: local workers are stopped (they checkpoint and
  resume at the next start); cluster jobs go on without the service.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Phase = Literal["pending", "running", "ended", "unknown"]
LOG = "worker.log"


@dataclass(frozen=True)
class Launch:
    """One worker to start: the job, its folder (config.yaml, worker.log) and run directory, who
    it is for (placement may differ per tenant and per base model) and its whole environment."""

    job_id: str
    folder: Path
    run_dir: Path
    tenant: str
    model: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"


@dataclass(frozen=True)
class State:
    phase: Phase
    code: int | None = None  # ended: the worker's exit code (negative: the signal that killed it)
    retry: bool = False  # ended by the cluster, not by the run (node lost, preempted): run it again
    reason: str = ""  # what the cluster said, for the job's events

    @property
    def stopped_cleanly(self) -> bool:
        """Exit code 0 without a finished run: tunesmith stopped on a signal after its checkpoint."""
        return self.phase == "ended" and self.code == 0


class Executor(ABC):
    name: str = ""

    @abstractmethod
    def submit(self, launch: Launch) -> str: ...

    @abstractmethod
    def state(self, handle: str) -> State: ...

    @abstractmethod
    def stop(self, handle: str) -> None: ...

    @abstractmethod
    def adopt(self, handle: str, launch: Launch) -> bool: ...

    def release(self, handles: list[str]) -> None:  # noqa: B027 (optional: most executors have nothing to let go)
        """The service is stopping; cluster jobs go on without it."""


def tunesmith_argv(python: str, config: Path) -> list[str]:
    """The one command every executor runs: the run resumes from its checkpoint if it has one."""
    return [python, "-m", "tunesmith", "train", str(config), "--resume", "--quiet"]
