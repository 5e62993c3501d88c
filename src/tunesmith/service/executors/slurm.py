"""Jobs as Slurm batch jobs: `sbatch` a script that runs `tunesmith train CONFIG --resume` under
`srun` (several tasks: one training process per task, the DDP/FSDP path over Slurm's ranks).

What makes a job survive its node: `--requeue` (Slurm runs it again after a node failure or a
preemption, and `scontrol requeue` works), `--signal=TERM@N` (SIGTERM to the training processes
N seconds before the time limit: tunesmith writes a checkpoint and exits 0, and the script queues
the job again), and `--resume` (each run of the script continues from the run's last
checkpoint, exactly). A stop the service asks for is a file in the job's folder, `stop-requested`,
and SIGTERM to the job's steps: the script sees the file and ends instead of requeueing.

The state comes from `squeue` while the controller holds the job, then from the exit file the
script writes last (`slurm-exit-JOBID`) and Slurm's accounting (`sacct`: state and exit code,
where slurmdbd runs), so the service finds how a job ended while the service was down, long
after the controller forgot it (MinJobAge) — even where the script never wrote its file.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from tunesmith import atomic
from tunesmith.service.cluster import SlurmPlacement
from tunesmith.service.executors import LOG, Executor, Launch, State, tunesmith_argv

SCRIPT = "slurm.sbatch"
STOP = "stop-requested"
PENDING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "SUSPENDED",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}
RUNNING = {"RUNNING", "COMPLETING"}
RETRY = {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "TIMEOUT", "DEADLINE"}  # the cluster ended it, not the run
NOT_SENT = ("CUDA_VISIBLE_DEVICES",)  # Slurm binds each job's GPUs itself


def _options(launch: Launch, place: SlurmPlacement) -> list[str]:
    options = [
        f"--job-name=tunesmith-{launch.job_id}",
        f"--output={launch.folder / LOG}",
        "--open-mode=append",
        f"--chdir={launch.folder}",
        "--requeue",
        f"--signal=TERM@{place.signal_s}",
        f"--nodes={place.nodes}",
        f"--ntasks-per-node={place.tasks_per_node}",
    ]
    for name in ("partition", "account", "qos", "cpus_per_task", "mem", "time"):
        value = getattr(place, name)
        if value is not None:
            options.append(f"--{name.replace('_', '-')}={value}")
    if place.gpus_per_node:
        options.append(f"--gpus-per-node={place.gpus_per_node}")
    return options + list(place.extra)


def batch_script(launch: Launch, place: SlurmPlacement, python: str) -> str:
    """The script `sbatch` runs for one job (shown in docs/service.md)."""
    train = shlex.join(tunesmith_argv(python, launch.config))
    if place.nodes * place.tasks_per_node > 1:  # one process per task; tunesmith joins them as torchrun's ranks
        ranks = (
            "RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
            "LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE"
        )
        launch_line = (
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"\n'
            "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n"
            f"srun --export=ALL bash -c {shlex.quote(f'{ranks} exec {train}')}"
        )
    else:
        launch_line = f"srun --export=ALL {train}"
    run, exit_file = shlex.quote(str(launch.run_dir)), "slurm-exit-$SLURM_JOB_ID"
    header = "\n".join(f"#SBATCH {option}" for option in _options(launch, place))
    return f"""#!/bin/bash
{header}
# tunesmith service job {launch.job_id}. Every run of this script continues the training run
# from its last checkpoint (--resume): after a requeue it picks up exactly where it stopped.
[ -f {STOP} ] && exit 0  # the service asked this job to stop while it waited
{launch_line}
code=$?
if [ -f {run}/summary.json ] && [ -f {run}/report.html ]; then
  code=0  # the run is complete
elif [ "$code" -eq 0 ] && [ ! -f {STOP} ]; then
  # SIGTERM from the cluster (time limit near, preemption): checkpoint written; run again
  scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
echo "$code" > {exit_file}.tmp && mv {exit_file}.tmp {exit_file}
exit "$code"
"""


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, python: str, placement, timeout_s: float = 30):
        self.python, self.placement, self.timeout_s = python, placement, timeout_s  # placement(model, tenant)

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, env=env)

    def submit(self, launch: Launch) -> str:
        (launch.folder / STOP).unlink(missing_ok=True)
        place = self.placement(launch.model, launch.tenant)
        script = launch.folder / SCRIPT
        atomic.write_text(script, batch_script(launch, place, self.python))
        env = {k: v for k, v in launch.env.items() if k not in NOT_SENT}
        if "SLURM_CONF" in os.environ:  # a cluster whose configuration is not in the default place
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]  # (the script's own scontrol needs it too)
        # only these variables reach the job, with their values taken from sbatch's own environment (never written out)
        done = self._run(["sbatch", "--parsable", f"--export={','.join(sorted(env))}", str(script)], env=env)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch: {(done.stderr or done.stdout).strip() or f'exit code {done.returncode}'}")
        job = done.stdout.strip().split(";")[0]
        return f"slurm:{job}:{launch.folder}"

    @staticmethod
    def _parts(handle: str) -> tuple[str, Path]:
        _, job, folder = handle.split(":", 2)
        return job, Path(folder)

    def state(self, handle: str) -> State:
        job, folder = self._parts(handle)
        try:
            listed = self._run(["squeue", "--noheader", "--jobs", job, "--states", "all", "--format", "%T|%r"])
        except (OSError, subprocess.TimeoutExpired) as e:
            return State("unknown", reason=f"squeue: {e}")
        if listed.returncode == 0 and listed.stdout.strip():
            status, _, why = listed.stdout.strip().splitlines()[0].partition("|")
            if status in PENDING:
                return State("pending", reason=f"slurm job {job} {status} ({why})")
            if status in RUNNING:
                return State("running", reason=f"slurm job {job} {status}")
            return self._ended(job, folder, status, self._accounted(job))
        if listed.returncode != 0 and "Invalid job id" not in listed.stderr:
            return State("unknown", reason=f"squeue: {listed.stderr.strip()}")
        accounted = self._accounted(job)  # slurmctld has forgotten the job (MinJobAge): its accounting knows
        if accounted and (accounted[0] in PENDING or accounted[0] in RUNNING):
            # the controller is done with it but its end has not reached slurmdbd yet: ask again
            return State("unknown", reason=f"slurm job {job}: accounting still says {accounted[0]}")
        return self._ended(job, folder, accounted[0] if accounted else None, accounted)

    def _accounted(self, job: str) -> tuple[str, int | None] | None:
        """The job's last state and exit code in Slurm's accounting (sacct; None where accounting
        is off or does not know the job). A requeued job has a record per run: the last counts."""
        try:
            done = self._run(
                ["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job, "--format", "State,ExitCode"]
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 1]
        if done.returncode != 0 or not rows:
            return None
        status, exit_code = rows[-1]
        code, _, signal = exit_code.partition(":")  # "3:0": exit code 3; "0:15": killed by signal 15
        try:
            number = -int(signal) if int(signal) else int(code)
        except ValueError:
            number = None
        return status.split()[0], number  # "CANCELLED by 0" -> CANCELLED

    def _ended(self, job: str, folder: Path, status: str | None, accounted: tuple[str, int | None] | None) -> State:
        status = status.split()[0] if status else None
        exit_file = folder / f"slurm-exit-{job}"  # the script's own last word (all there is without accounting)
        if exit_file.is_file():
            try:
                return State(
                    "ended", code=int(exit_file.read_text().strip()), reason=f"slurm job {job} {status or 'ended'}"
                )
            except ValueError:
                pass
        if status in RETRY:
            return State("ended", code=None, retry=True, reason=f"slurm job {job} {status}")
        if status is None:  # Slurm has forgotten it and its script never finished: lost with its node
            return State("ended", code=None, retry=True, reason=f"slurm job {job} is gone without an exit status")
        if status == "COMPLETED":  # the script exited 0
            return State("ended", code=0, reason=f"slurm job {job} {status}")
        if status == "FAILED" and accounted and accounted[0] == "FAILED":  # (not a record still catching up)
            return State("ended", code=accounted[1], reason=f"slurm job {job} {status}")
        if status == "CANCELLED":
            return State(
                "ended", code=None, reason=f"slurm job {job} was cancelled in Slurm (scancel), not by the service"
            )
        return State("ended", code=None, reason=f"slurm job {job} ended {status} in Slurm")

    def stop(self, handle: str) -> None:
        job, folder = self._parts(handle)
        (folder / STOP).touch()
        state = self.state(handle)
        argv = ["scancel", job] if state.phase == "pending" else ["scancel", "--signal=TERM", job]
        try:
            self._run(argv)
        except (OSError, subprocess.TimeoutExpired):
            pass  # the stop file still ends it when it runs again

    def adopt(self, handle: str, launch: Launch) -> bool:
        return True  # Slurm jobs go on without the service; their state says the rest
