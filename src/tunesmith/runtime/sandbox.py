"""User code in its own process: a `grade(sample, item)` function (OpenAI's python grader).

The code runs in a separate Python interpreter (isolated mode, an empty working directory, no
environment variables but PATH) under an address-space limit; each call has a wall-clock limit,
past which the process is killed and started afresh for the next call. What the code prints goes
to stderr, never into the answers. This bounds time and memory; it is not a security boundary
against hostile code (the process has the user's file and network access), so only graders the
person running tunesmith trusts belong here.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile

RUNNER = r"""
import json, math, os, sys
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
def say(obj):
    answers.write(json.dumps(obj) + "\n"); answers.flush()
source = json.loads(sys.stdin.readline())["source"]
space = {"__name__": "grader"}
try:
    exec(compile(source, "<grader>", "exec"), space)
    grade = space["grade"]
except BaseException as e:
    say({"error": f"{type(e).__name__}: {e}"}); sys.exit(0)
say({"ready": True})
for line in sys.stdin:
    sample, item = json.loads(line)
    try:
        value = grade(sample, item)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            say({"error": f"grade returned {value!r}, not a finite number"})
        else:
            say({"score": float(value)})
    except BaseException as e:
        say({"error": f"{type(e).__name__}: {e}"[:500]})
"""


class SandboxError(Exception):
    pass


def _limit_memory(megabytes: int):
    def apply() -> None:
        import resource

        limit = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


class PythonFunction:
    """`grade(sample, item) -> float` from `source`, called in a child process; SandboxError for a
    call that raised, returned something other than a number, ran out of time or of memory."""

    def __init__(self, source: str, timeout_s: float = 10.0, memory_mb: int = 512):
        self.source, self.timeout_s, self.memory_mb = source, timeout_s, memory_mb
        self.process: subprocess.Popen | None = None
        self.workdir = tempfile.TemporaryDirectory(prefix="tunesmith-grader-")

    def start(self) -> None:
        """Start the child and load the source (called on first use, or early to fail fast)."""
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=self.workdir.name, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            preexec_fn=_limit_memory(self.memory_mb))
        self.process.stdin.write(json.dumps({"source": self.source}) + "\n")
        self.process.stdin.flush()
        first = self._read()
        if "error" in first:
            self.close()
            raise SandboxError(f"the grader's source failed to load: {first['error']}")

    def _read(self) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            timed_out = not ready
            self.close()
            raise SandboxError(f"the grader took over {self.timeout_s:g} s" if timed_out
                               else f"the grader's process died (over {self.memory_mb} MB of memory?)")
        return json.loads(line)

    def __call__(self, sample: dict, item: dict) -> float:
        if self.process is None:
            self.start()
        try:
            self.process.stdin.write(json.dumps([sample, item]) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            raise SandboxError(f"the grader's process died (over {self.memory_mb} MB of memory?)") from None
        answer = self._read()
        if "error" in answer:
            raise SandboxError(answer["error"])
        return answer["score"]

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
            self.process = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
