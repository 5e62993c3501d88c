"""A local worker ends with the service that started it, however the service ends, and a restarted
service stops a leftover worker only if it is the very process it started (psutil)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from tunesmith.runtime.parent import PARENT_ENV
from tunesmith.service.executors.local import stop_leftover

WORKER = "from tunesmith.runtime.parent import follow_parent; follow_parent(); import time; print('up', flush=True); "
WORKER += "time.sleep(120)"
# a stand-in for the service: starts the worker naming itself, says the worker's pid, waits to be killed
SERVICE = (
    "import os, subprocess, sys, time\n"
    f"w = subprocess.Popen([sys.executable, '-c', {WORKER!r}], env={{**os.environ, {PARENT_ENV!r}: str(os.getpid())}},"
    " stdout=subprocess.PIPE, text=True)\n"
    "w.stdout.readline()\n"
    "print(w.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_worker_gets_sigterm_when_its_service_is_killed():
    service = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True)
    worker = psutil.Process(int(service.stdout.readline()))
    assert worker.is_running() and worker.ppid() == service.pid
    service.send_signal(signal.SIGKILL)  # no handler, no clean-up: only the kernel can tell the worker
    service.wait()
    worker.wait(timeout=30)  # raises TimeoutExpired if the worker outlives its service


def test_a_worker_whose_service_went_before_it_started_following_stops_at_once():
    not_its_parent = psutil.Process().ppid()  # alive, but not the worker's parent
    worker = subprocess.run(
        [sys.executable, "-c", WORKER], env={PARENT_ENV: str(not_its_parent)}, capture_output=True, timeout=60
    )
    assert worker.returncode == -signal.SIGTERM and worker.stdout == b""


def test_a_leftover_worker_is_stopped_only_if_it_is_the_process_that_was_started(tmp_path):
    config = str(tmp_path / "job" / "config.yaml")
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", config])
    try:
        started = psutil.Process(leftover.pid).create_time()
        while config not in psutil.Process(leftover.pid).cmdline():  # until it has exec'd (a worker long has)
            time.sleep(0.01)
        assert not stop_leftover(leftover.pid, started + 1.0, config)  # a reused pid: another process
        assert not stop_leftover(leftover.pid, started, str(tmp_path / "other" / "config.yaml"))
        assert leftover.poll() is None
        assert stop_leftover(leftover.pid, started, config, timeout=30)
        assert leftover.poll() is not None  # ended (psutil reaped it)
    finally:
        leftover.kill()
