"""Workers on this machine: one process each, as many as the scheduler starts at once.

A worker gets SIGTERM when the service process goes, however it goes (it asks Linux for that
itself at start-up: runtime/parent.py), so a service killed with -9 leaves each job
checkpointed; after the restart `adopt` stops any worker that outlived it (other systems), found
by pid and start time (psutil), and the job is queued again to resume. A worker is in a process
group of its own: a Ctrl-C meant for the service reaches it only through the service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from tunesmith.runtime.parent import PARENT_ENV
from tunesmith.service.executors import LOG, Executor, Launch, State, tunesmith_argv


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, python: str = sys.executable):
        self.python = python
        self.processes: dict[str, subprocess.Popen] = {}

    def submit(self, launch: Launch) -> str:
        with (launch.folder / LOG).open("ab") as out:
            process = subprocess.Popen(
                tunesmith_argv(self.python, launch.config),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=launch.folder,
                env={**launch.env, PARENT_ENV: str(os.getpid())},
                process_group=0,
            )
        handle = f"local:{process.pid}:{_started(process.pid)}"
        self.processes[handle] = process
        return handle

    def state(self, handle: str) -> State:
        process = self.processes.get(handle)
        if process is None:  # a worker of an earlier service: adopt() has stopped it
            return State("ended", code=None, reason="the worker of an earlier start of the service")
        code = process.poll()
        if code is None:
            return State("running")
        del self.processes[handle]
        return State("ended", code=code)

    def stop(self, handle: str) -> None:
        process = self.processes.get(handle)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the run checkpoints after this step and exits

    def adopt(self, handle: str, launch: Launch) -> bool:
        """A worker of the previous service still running (where it could not follow the service):
        stopped now."""
        _, pid, *started = handle.split(":")  # local:PID:START (older services: local:PID)
        stop_leftover(int(pid), float(started[0]) if started else None, str(launch.config))
        return False

    def release(self, handles: list[str]) -> None:
        """SIGTERM to every worker (each checkpoints and exits), then wait for them."""
        for handle in handles:
            self.stop(handle)
        for handle in handles:
            process = self.processes.get(handle)
            if process is None:
                continue
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, as the system keeps it)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stop_leftover(pid: int, started: float | None, config: str, timeout: float = 60) -> bool:
    """SIGTERM to `pid` and wait for it (it checkpoints and exits), only if it is the worker that
    was started: the same start time where it was recorded, and `config` among its arguments (a
    pid may have been reused since). Whether it was stopped."""
    try:
        process = psutil.Process(pid)
        if (started is not None and process.create_time() != started) or config not in process.cmdline():
            return False
        process.terminate()
        process.wait(timeout=timeout)
        return True
    except psutil.TimeoutExpired:
        return False  # still writing its checkpoint: left to finish it
    except psutil.Error:  # gone already, or not ours to signal
        return False
