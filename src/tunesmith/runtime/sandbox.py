"""User code in its own process: a `grade(sample, item)` function (OpenAI's python grader).

Two isolations, `bubblewrap` and `process`:
- `bubblewrap` (Debian's `bwrap`) is the trust boundary a service needs for a tenant's code: new
  user, pid, network, IPC and UTS namespaces (no network at all, not even the host's loopback);
  a read-only view of the system's `/usr` and the interpreter, nothing else of the machine's
  files (no home, no service directory, no keys), a private `/tmp` of TMP_MB as the only
  writable place; no environment but PATH; killed with its parent. Started by root, it runs as
  a user id of its own (`sandbox_uid`), so the process limit holds: the code can start no
  process or thread (`RLIMIT_NPROC` = the sandbox's own three). Started by another user it keeps
  that user's id, and the pid namespace and the time limit bound its forks.
- `process`: a separate interpreter (isolated mode, an empty working directory, no environment
  but PATH). This bounds time and memory; it is not a security boundary (the code has the user's
  files and network), so only code the person running tunesmith trusts belongs there.
`auto` is bubblewrap where `bwrap` is installed, else process (with a warning once).

Both: an address-space limit (`memory_mb`), a CPU-time limit over the process's life, a file-size
limit, a wall-clock limit per call past which the process is killed and started afresh for the
next call. Under bubblewrap the code has the standard library of an interpreter every user may
read (this one's, else /usr/bin/python3). What it prints goes nowhere.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

log = logging.getLogger("tunesmith.sandbox")
ISOLATIONS = ("auto", "bubblewrap", "process")
SANDBOX_UID_BASE = 2_000_000  # user ids no account has: this process's pid and a count of its starts added
SANDBOX_PROCESSES = 3  # bwrap, the pid namespace's init, the interpreter: no room for a fork or a thread
TMP_MB = 64

RUNNER = r"""
import json, math, os, sys
answers = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1); os.dup2(null, 2)  # what the code prints goes nowhere
me = os.getpid()
def say(obj):
    if os.getpid() != me:  # a forked child never answers
        os._exit(0)
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


def bubblewrap() -> str | None:
    return shutil.which("bwrap")


def _world_readable(path: Path) -> bool:
    """Every directory on the way to `path` enterable, and `path` readable, by any user."""
    try:
        return all(p.stat().st_mode & (stat.S_IROTH if p == path else stat.S_IXOTH) for p in [path, *path.parents])
    except OSError:
        return False


def interpreter(for_other_user: bool) -> tuple[str, str]:
    """(interpreter, its installation prefix) the sandbox runs: this one's where the sandbox's
    user may read it, else the system's."""
    mine, prefix = Path(os.path.realpath(sys.executable)), Path(sys.base_prefix)
    if not for_other_user or (_world_readable(mine) and _world_readable(prefix / "lib")):
        return str(mine), str(prefix)
    system = Path("/usr/bin/python3")
    if system.exists():
        return str(system.resolve()), "/usr"
    raise SandboxError(f"no Python interpreter the sandbox's user may read ({mine} is private; install python3)")


def bubblewrap_command(python: str, prefix: str, tmp_mb: int) -> list[str]:
    cmd = [bubblewrap() or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    if not prefix.startswith("/usr"):
        cmd += ["--ro-bind", prefix, prefix]
    cmd += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(tmp_mb << 20),
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/tmp",
        "--remount-ro",
        "/",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--",
        python,
        "-I",
        "-c",
        RUNNER,
    ]
    return cmd


_starts = itertools.count()


def sandbox_uid() -> int:
    """A user id no account has and no other sandbox shares (this process's pid, then a count of
    its starts), so that the process limit counts this sandbox's processes alone."""
    return SANDBOX_UID_BASE + ((os.getpid() & 0xFFFF) << 8) + (next(_starts) & 0xFF)


def _limits(memory_mb: int, cpu_s: int, uid: int | None):
    def apply() -> None:
        import resource

        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (TMP_MB << 20, TMP_MB << 20))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (SANDBOX_PROCESSES, SANDBOX_PROCESSES))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return apply


_warned = False


def resolve_isolation(isolation: str) -> str:
    global _warned
    if isolation not in ISOLATIONS:
        raise SandboxError(f"isolation {isolation!r}: use one of {', '.join(ISOLATIONS)}")
    if isolation == "bubblewrap" and bubblewrap() is None:
        raise SandboxError(
            "python graders run under bubblewrap here, and `bwrap` is not installed (apt-get install bubblewrap)"
        )
    if isolation == "auto":
        if bubblewrap() is not None:
            return "bubblewrap"
        if not _warned:
            log.warning(
                "bubblewrap (bwrap) is not installed: python graders run as plain processes, with this user's "
                "files and network (apt-get install bubblewrap for a sandbox)"
            )
            _warned = True
        return "process"
    return isolation


class PythonFunction:
    """`grade(sample, item) -> float` from `source`, called in a child process; SandboxError for a
    call that raised, returned something other than a number, ran out of time or of memory."""

    def __init__(self, source: str, timeout_s: float = 10.0, memory_mb: int = 512, isolation: str = "auto"):
        self.source, self.timeout_s, self.memory_mb = source, timeout_s, memory_mb
        self.isolation = resolve_isolation(isolation)
        self.cpu_s = int(max(60, 30 * timeout_s))
        self.process: subprocess.Popen[str] | None = None
        self.workdir = tempfile.TemporaryDirectory(prefix="tunesmith-grader-")

    def _command(self) -> tuple[list[str], int | None]:
        """The command line, and the user id it runs as (None: this process's)."""
        if self.isolation == "process":
            return [sys.executable, "-I", "-c", RUNNER], None
        own_user = os.geteuid() == 0
        python, prefix = interpreter(for_other_user=own_user)
        return bubblewrap_command(python, prefix, TMP_MB), sandbox_uid() if own_user else None

    def start(self) -> None:
        """Start the child and load the source (called on first use, or early to fail fast)."""
        cmd, uid = self._command()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir.name,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            preexec_fn=_limits(self.memory_mb, self.cpu_s, uid),
        )
        stdin = self._pipes()[0]
        stdin.write(json.dumps({"source": self.source}) + "\n")
        stdin.flush()
        first = self._read()
        if "error" in first:
            self.close()
            raise SandboxError(f"the grader's source failed to load: {first['error']}")

    def _pipes(self) -> tuple[IO[str], IO[str], IO[str]]:
        """The started child's stdin, stdout and stderr."""
        assert self.process is not None and self.process.stdin and self.process.stdout and self.process.stderr
        return self.process.stdin, self.process.stdout, self.process.stderr

    def _read(self) -> dict:
        stdout = self._pipes()[1]
        ready, _, _ = select.select([stdout], [], [], self.timeout_s)
        line = stdout.readline() if ready else ""
        if not line:
            why = f"the grader took over {self.timeout_s:g} s" if not ready else self._why_dead()
            self.close()
            raise SandboxError(why)
        return json.loads(line)

    def _why_dead(self) -> str:
        """What ended the child: the sandbox's own complaint, or the limits it may have hit."""
        assert self.process is not None  # started
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "the grader's process stopped answering"
        said = self._stderr_tail()
        if said.startswith("bwrap:"):
            return f"the sandbox did not start ({said})"
        return (
            f"the grader's process died (over {self.memory_mb} MB of memory, {self.cpu_s} s of CPU, or another "
            "limit of its sandbox)"
        )

    def _stderr_tail(self) -> str:
        try:
            stderr = self._pipes()[2]
            ready, _, _ = select.select([stderr], [], [], 0.5)
            text = stderr.read(4096) if ready else ""
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def __call__(self, sample: dict, item: dict) -> float:
        if self.process is None:
            self.start()
        try:
            stdin = self._pipes()[0]
            stdin.write(json.dumps([sample, item]) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            why = self._why_dead()
            self.close()
            raise SandboxError(why) from None
        answer = self._read()
        if "error" in answer:
            raise SandboxError(answer["error"])
        return answer["score"]

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            self.process = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
