"""Jobs on a Ray cluster through Ray's job server (`ray.job_submission`): each worker one Ray job
whose entrypoint is `tunesmith train CONFIG --resume`, placed by its resource requests.

Ray does not run a job again by itself; the service does: a job that ends before its run is
complete, without its own error — stopped on SIGTERM after a checkpoint (exit 0), its process
killed with its node, its supervisor gone — is submitted again and resumes from the run's last
checkpoint. A stop the service asks for is Ray's `stop_job` (SIGTERM, then SIGKILL after
`stop_wait_s`, which must leave time for the checkpoint).
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from tunesmith.errors import UserError
from tunesmith.service.executors import LOG, Executor, Launch, State, tunesmith_argv

NOT_SENT = ("CUDA_VISIBLE_DEVICES",)  # Ray assigns each job's GPUs itself
LOST = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT"}


def entrypoint(launch: Launch, python: str) -> str:
    """The shell command Ray runs: in the job's folder on the shared filesystem, output to worker.log."""
    train = shlex.join(tunesmith_argv(python, launch.config))
    return f"cd {shlex.quote(str(launch.folder))} && exec {train} >> {LOG} 2>&1"


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str, python: str, placement):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise UserError("--cluster: executor ray needs Ray's job client: pip install 'tunesmith[ray]'") from None
        self.address, self.python, self.placement = address, python, placement
        self._client_class = JobSubmissionClient
        self._client: Any = None  # Ray's JobSubmissionClient, made on first use

    @property
    def client(self):
        if self._client is None:  # connects (and checks the address) on first use
            self._client = self._client_class(self.address)
        return self._client

    def submit(self, launch: Launch) -> str:
        place = self.placement(launch.model, launch.tenant)
        env = {k: v for k, v in launch.env.items() if k not in NOT_SENT}
        env["RAY_JOB_STOP_WAIT_TIME_S"] = str(place.stop_wait_s)  # read by Ray's supervisor of this job
        submission = f"tunesmith-{launch.job_id}-{time.time_ns() // 1_000_000}"
        self.client.submit_job(
            entrypoint=entrypoint(launch, self.python),
            submission_id=submission,
            runtime_env={"env_vars": env},
            entrypoint_num_cpus=place.num_cpus,
            entrypoint_num_gpus=place.num_gpus,
            entrypoint_memory=place.memory_mb * (1 << 20) if place.memory_mb else None,
            entrypoint_resources=place.resources or None,
            metadata={"tunesmith_job": launch.job_id},
        )
        return f"ray:{submission}"

    def state(self, handle: str) -> State:
        submission = handle.split(":", 1)[1]
        try:
            info = self.client.get_job_info(submission)
        except RuntimeError as e:  # Ray's client: the server answered, and not with the job
            if "404" in str(e) or "does not exist" in str(e):
                return State("ended", retry=True, reason=f"ray job {submission} is gone from the cluster")
            return State("unknown", reason=f"ray: {e}")
        except Exception as e:  # the job server cannot be reached now
            return State("unknown", reason=f"ray: {type(e).__name__}: {e}")
        status = str(info.status)
        reason = f"ray job {submission} {status}" + (f": {info.message}" if info.message else "")
        if status == "PENDING":
            return State("pending", reason=reason)
        if status == "RUNNING":
            return State("running", reason=reason)
        code = info.driver_exit_code
        if status == "SUCCEEDED":
            return State("ended", code=0 if code is None else code, reason=reason)
        if status == "STOPPED":
            return State("ended", code=code, reason=reason)
        error = str(getattr(info.error_type, "value", info.error_type) or "")  # an enum or its string, by version
        lost = error in LOST or (code is not None and code < 0)  # killed with its node, or by a signal
        return State("ended", code=code, retry=lost, reason=reason)

    def stop(self, handle: str) -> None:
        try:
            self.client.stop_job(handle.split(":", 1)[1])
        except Exception:
            pass  # gone already, or the server is away: the next look at its state says which

    def adopt(self, handle: str, launch: Launch) -> bool:
        return True  # Ray jobs go on without the service; their state says the rest
