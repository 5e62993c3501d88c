"""Real clusters on this machine for the executor tests: a one-node Slurm cluster with accounting
(Debian's slurm-wlm and slurmdbd: munged, a private MariaDB server, slurmdbd, slurmctld, slurmd;
so `sacct` answers as on a production cluster) and a one-node Ray cluster (`ray start --head`).
Each is installed where missing when the tests run as root (as `.ci/run` does for chromium), or
the tests skip saying why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SLURM_PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
SLURM_COMMANDS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db")
DB_PASSWORD = "tunesmith-test"  # the private database's only user; reachable on loopback only


def _apt_install(packages: tuple[str, ...]) -> str | None:
    """Install Debian packages (root only); None when done, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root on a Debian system"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (
        ["apt-get", "install", "-y", "-q", *packages],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", *packages],
    ):
        done = subprocess.run(attempt, capture_output=True, text=True, env=env)
        if done.returncode == 0 and attempt[1] == "install":
            return None
    return f"apt-get install {' '.join(packages)} failed: {done.stderr.strip().splitlines()[-1:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    if not shutil.which("munge"):
        return False
    made = subprocess.run(["munge", "-n"], capture_output=True)
    return made.returncode == 0 and subprocess.run(["unmunge"], input=made.stdout, capture_output=True).returncode == 0


def _start_munge() -> str | None:
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    subprocess.run(["munged", "--force"], capture_output=True)
    for _ in range(50):
        if _munge_works():
            return None
        time.sleep(0.1)
    return "munged did not start"


SLURM_CONF = """ClusterName=tunesmith
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
MinJobAge={min_job_age}
KillWait=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


SLURMDBD_CONF = """AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={password}
StorageLoc=slurm_acct_db
PidFile={root}/slurmdbd.pid
LogFile={root}/slurmdbd.log
"""


def _wait(ready, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not come up; see {log}")


class Slurm:
    """A running one-node cluster with accounting: `env` has SLURM_CONF for every Slurm command.

    `min_job_age` is how long slurmctld remembers a finished job: past it only `sacct` knows how
    the job ended (5 s here, so the tests read finished jobs from accounting, as a service does
    that comes back after Slurm's default 300 s)."""

    def __init__(self, root: Path, min_job_age: int = 5):
        self.root, self.host, self.min_job_age = root, socket.gethostname(), min_job_age
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=30)

    def _start_database(self, port: int) -> None:
        """A MariaDB server of the test's own (data under root/db, loopback port) for slurmdbd."""
        data = self.root / "db"
        done = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {done.stderr.strip()[-500:]}")
        init = self.root / "db-init.sql"
        init.write_text(
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';\n"
            "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';\n"
        )
        self.daemons.append(
            subprocess.Popen(
                [
                    "mariadbd",
                    "--no-defaults",
                    f"--datadir={data}",
                    "--user=root",
                    "--bind-address=127.0.0.1",
                    f"--port={port}",
                    f"--socket={self.root}/db.sock",
                    f"--pid-file={self.root}/db.pid",
                    f"--init-file={init}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    f"--log-error={self.root}/db.log",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(answers, "mariadbd", self.root / "db.log")

    def start(self) -> None:
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        db_port, dbd_port = _free_port(), _free_port()
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                ctld_port=_free_port(),
                d_port=_free_port(),
                root=self.root,
                cpus=os.cpu_count() or 1,
                dbd_port=dbd_port,
                min_job_age=self.min_job_age,
            )
        )
        dbd_conf = self.root / "slurmdbd.conf"  # found beside slurm.conf; slurmdbd wants it private
        dbd_conf.write_text(
            SLURMDBD_CONF.format(dbd_port=dbd_port, db_port=db_port, password=DB_PASSWORD, root=self.root)
        )
        dbd_conf.chmod(0o600)
        self._start_database(db_port)
        self.daemons.append(
            subprocess.Popen(["slurmdbd", "-D"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        _wait(lambda: "slurmdbd version" in _read(self.root / "slurmdbd.log"), "slurmdbd", self.root / "slurmdbd.log")
        self.daemons.append(
            subprocess.Popen(
                ["slurmctld", "-D", "-i", "-f", str(self.conf)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self.daemons.append(
            subprocess.Popen(
                ["slurmd", "-D", "-f", str(self.conf), "-N", self.host],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run("sinfo", "--noheader", "--format", "%T").stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"slurm did not come up (sinfo: {state!r}); see {self.root}/slurmctld.log")

    def accounted(self, *argv: str) -> list[list[str]]:
        """sacct's rows (fields split) for the given selection, every allocation and step since yesterday."""
        out = self.run("sacct", "--noheader", "--parsable2", "--starttime", "now-1days", *argv).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def job_state(self, job: str) -> str:
        """The job's state in Slurm's accounting (the record of its last run)."""
        rows = self.accounted("--allocations", "--jobs", job, "--format", "State")
        return rows[-1][0].split()[0] if rows else ""

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root")
        for daemon in reversed(self.daemons):
            daemon.terminate()
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def slurm_cluster(root: Path):
    """Start a one-node Slurm cluster under `root` (installing Slurm where missing) or skip."""
    if not all(shutil.which(command) for command in SLURM_COMMANDS):
        why = _apt_install(SLURM_PACKAGES)
        if why:
            pytest.skip(f"Slurm (Debian's {', '.join(SLURM_PACKAGES)}) is not installed and cannot be: {why}")
    if os.geteuid() != 0:
        pytest.skip("the test's Slurm cluster runs its daemons as root")
    why = _start_munge()
    if why:
        pytest.skip(f"Slurm needs munge: {why}")
    cluster = Slurm(root)
    cluster.start()
    return cluster


class Ray:
    """A running one-node Ray cluster; `address` is its job server."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths live under it
        self.port, self.dashboard = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.ray = str(Path(sys.executable).with_name("ray"))

    def start(self) -> None:
        done = subprocess.run(
            [
                self.ray,
                "start",
                "--head",
                "--port",
                str(self.port),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard),
                "--num-cpus",
                str(os.cpu_count() or 1),
                "--include-dashboard",
                "true",
                "--disable-usage-stats",
                f"--temp-dir={self.root}",
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed: {done.stderr.strip()[-2000:]}")
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                JobSubmissionClient(self.address).list_jobs()
                return
            except Exception:
                time.sleep(1)
        raise RuntimeError(f"ray's job server at {self.address} did not answer")

    def stop(self) -> None:
        subprocess.run([self.ray, "stop", "--force"], capture_output=True, env=self.env, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def ray_cluster():
    """Start a one-node Ray cluster or skip (Ray is in the dev extra)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'tunesmith[ray]')")
    cluster = Ray()
    cluster.start()
    return cluster
