"""Workers on this machine: one process each, as many as the scheduler starts at once.

A worker gets SIGTERM when the service process goes, however it goes (Linux: PR_SET_PDEATHSIG),
so a service killed with -9 leaves each job checkpointed; after the restart `adopt` stops any
worker that outlived it (other systems) and the job is queued again to resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunesmith.service.executors import LOG, Executor, Launch, State, tunesmith_argv


def _die_with_parent() -> None:
    """In the worker before exec: SIGTERM when the server process goes, however it goes."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: a restarted server stops leftover workers by their pid instead
    os.setpgrp()  # a Ctrl-C meant for the server reaches the worker only through the server


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
                env=launch.env,
                preexec_fn=_die_with_parent,
            )
        handle = f"local:{process.pid}"
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
        """A worker of the previous service still running (no PR_SET_PDEATHSIG): stopped now."""
        _stop_leftover(int(handle.split(":", 1)[1]), str(launch.config))
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


def _stop_leftover(pid: int, config: str) -> None:
    """SIGTERM to `pid` and wait for it, only if its command line names the job's config: a pid
    may have been reused since."""
    try:
        if config not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return
    except OSError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
