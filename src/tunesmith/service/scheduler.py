"""Jobs from `validating_files` to `succeeded`: checked, queued, each trained by a worker that is
a plain `tunesmith train CONFIG --resume`, watched, and turned into events, checkpoints and a
served model. Where a worker runs is its executor's business (executors/: this machine, Slurm,
Ray); everything else happens here.

One thread does all of it, twice a second: check new jobs' files, follow each running worker
(its metrics.jsonl becomes metrics events, its checkpoints the checkpoints the API lists, a
cancel or pause becomes the executor's stop: SIGTERM, on which tunesmith writes a checkpoint and
exits), and start queued jobs while fewer than `workers` run, tenants taking turns
(`fair_turns`). Status changes are conditional (`Store.transition`): a job moves only from the
state it was seen in. A worker that ends before its run is complete without an error of its own
(stopped on a signal after its checkpoint, lost with its node) is queued again and resumes
exactly from its last checkpoint, up to MAX_RESTARTS times. After a restart of the service the
jobs that were running are found again: a cluster's jobs are followed on (they may have finished
meanwhile), local workers, which stop with the service, are queued again. Workers start with a
minimal environment (`worker_env`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith import atomic
from tunesmith.config.graders import GraderSpec
from tunesmith.engine.checkpoint import ADAPTER, list_checkpoints
from tunesmith.engine.logbook import PLAN, read_metrics
from tunesmith.service.executors import LOG, Executor, Launch, State
from tunesmith.service.executors.local import LocalExecutor
from tunesmith.service.file_check import FileProblem, check_file
from tunesmith.service.files import FileStore
from tunesmith.service.job_spec import JobRequest, resolve, run_config, steps_per_epoch
from tunesmith.service.policy import LOCAL_POLICY, TenantPolicy, grader_variables
from tunesmith.service.store import Store, now

log = logging.getLogger("tunesmith.service")
TICK_S = 0.5
MAX_RESTARTS = 10  # times a job may stop before finishing (other than on request) and be run again


def ft_model_name(job: dict) -> str:
    """`ft:BASE:SUFFIX:ID`, as OpenAI names a fine-tune (ID: the job id's last 8 characters)."""
    return f"ft:{job['model']}:{job.get('user_provided_suffix') or ''}:{job['id'][-8:]}"


def checkpoint_name(job: dict, step: int) -> str:
    return f"{ft_model_name(job)}:ckpt-step-{step}"


def metrics_of(record: dict) -> dict:
    """A metrics.jsonl record in the names OpenAI's events and checkpoints use."""
    names = {
        "loss": "train_loss",
        "token_accuracy": "train_mean_token_accuracy",
        "val_loss": "valid_loss",
        "val_token_accuracy": "valid_mean_token_accuracy",
        "reward": "train_reward_mean",
        "val_reward": "valid_reward_mean",
    }
    out = {"step": record["step"]}
    out.update({ours: record[theirs] for theirs, ours in names.items() if theirs in record})
    if "val_loss" in record:
        out["full_valid_loss"] = record["val_loss"]
        if "val_token_accuracy" in record:
            out["full_valid_mean_token_accuracy"] = record["val_token_accuracy"]
    return out


# What a worker inherits of the server's environment: where things are, the locale, the kernel
# and thread settings; never the server's secrets. Everything else a job needs is in its config.
WORKER_VARIABLES = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TUNESMITH_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_CACHE",
    "XDG_CACHE_HOME",
    "VIRTUAL_ENV",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


def worker_env(server: dict[str, str] | os._Environ, granted: dict[str, str]) -> dict[str, str]:
    """A worker's environment: the listed variables and `LC_*` from the server's, plus the ones
    granted to this job (its graders' keys)."""
    env = {k: v for k, v in server.items() if k in WORKER_VARIABLES or k.startswith("LC_")}
    return {**env, **granted, "PYTHONUNBUFFERED": "1"}


@dataclass
class Worker:
    handle: str
    signalled: bool = False
    phase: str = "pending"


class Scheduler:
    def __init__(
        self,
        store: Store,
        files: FileStore,
        home: Path,
        bases: dict[str, str],
        workers: int = 1,
        probe_limit: int = 0,
        precision: str = "auto",
        replay: float = 0.0,
        executor: Executor | None = None,
        policy_of: Callable[[str], TenantPolicy] = lambda tenant: LOCAL_POLICY,
    ):
        self.store, self.files, self.home, self.bases = store, files, home, bases
        self.policy_of = policy_of
        self.executor = executor or LocalExecutor()
        self.turns: dict[str, int] = {}  # tenant -> when its last job started (fair_turns)
        self.workers, self.probe_limit, self.precision = workers, probe_limit, precision
        self.replay = replay
        self.running: dict[str, Worker] = {}
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tunesmith-scheduler", daemon=True)
        self.on_removed = lambda model_id: None  # the catalog unloads what is gone

    def _variables(self, job: dict) -> dict[str, str]:
        """The variables the job's graders name that its tenant may use (checked when it was
        created; checked again here, as the operator may have changed the policy since)."""
        settings = job["method"].get("reinforcement") or {}
        if not settings.get("grader"):
            return {}
        policy = self.policy_of(self.store.owner_of(job["id"]))
        names = grader_variables(GraderSpec(grader=settings["grader"]).grader)
        return {n: os.environ[n] for n in sorted(names) if policy.may_read(n) and n in os.environ}

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def run_dir(self, job_id: str) -> Path:
        return self.home / "runs" / job_id

    def launch_of(self, job: dict, env: dict[str, str] | None = None) -> Launch:
        return Launch(
            job["id"],
            self.job_dir(job["id"]),
            self.run_dir(job["id"]),
            self.store.owner_of(job["id"]),
            job["model"],
            env or {},
        )

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        self.thread.start()

    def stop(self) -> None:
        """Stop the scheduler; local workers get SIGTERM (checkpoint, exit) and resume at the next
        start, a cluster's jobs go on and are followed again then."""
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        self.executor.release([worker.handle for worker in self.running.values()])

    def poke(self) -> None:
        self.wake.set()

    def _recover(self) -> None:
        """Jobs that were running when the service stopped: a cluster's are followed on where they
        are (finished, failed or still training); the rest are queued again (a tenant's jobs start
        in the order they were created) and resume from their checkpoint."""
        for job in self.store.jobs(None, ("running",)):
            handle = self.store.handle(job["id"])
            if self._complete(job["id"]):  # it finished while no service watched
                self.store.set_handle(job["id"], None)
                self._succeed(job, self._follow(job))
                continue
            if handle and not handle.startswith(self.executor.name + ":"):  # the service now runs jobs elsewhere
                log.warning(
                    "%s: its worker %s is not followed by the %s executor; queued again",
                    job["id"],
                    handle,
                    self.executor.name,
                )
                handle = None
            if handle and self.executor.adopt(handle, self.launch_of(job)):
                self.running[job["id"]] = Worker(handle, signalled=self.store.control(job["id"]) is not None)
                self.store.add_event(
                    job["id"], f"The service restarted; following the job on the {self.executor.name} cluster"
                )
                continue
            self.store.set_handle(job["id"], None)
            if self.store.transition(job["id"], ("running",), status="queued", estimated_finish=None) is not None:
                self.store.add_event(job["id"], "The server restarted; the job resumes from its last checkpoint")

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:  # one bad job must not stop the others
                log.exception("scheduler tick failed")
            self.wake.wait(TICK_S)
            self.wake.clear()

    def tick(self) -> None:
        for job in self.store.jobs(None, ("validating_files",), oldest_first=True):
            self._validate(job)
        for job_id in list(self.running):
            try:
                self._watch(job_id)
            except Exception:  # one job's trouble must not stop the others being followed
                log.exception("following %s failed", job_id)
        if self.stopping.is_set():
            return
        running = Counter(self.store.job_owner(job_id) for job_id in self.running)
        free = self.workers - len(self.running)
        for job in fair_turns(self.store.queue(), running, free, self._job_limit, self.turns):
            self._launch(job)

    def _job_limit(self, tenant: str) -> int | None:
        return self.policy_of(tenant).max_running_jobs

    # --- validating_files -> queued | failed -----------------------------------------------------
    def _validate(self, job: dict) -> None:
        kind = job["method"]["type"]
        folder = self.job_dir(job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        counts = {}
        try:
            for param in ("training_file", "validation_file"):
                file_id = job.get(param)
                if file_id is None:
                    continue
                found = self.store.file(file_id, None)
                if found is None:
                    raise FileProblem(
                        "invalid_" + param, f"{file_id}: the file was deleted before the job started", param
                    )
                body, sha = found
                target = folder / ("train.jsonl" if param == "training_file" else "val.jsonl")
                self.files.copy_to(
                    sha, target
                )  # the job keeps its own copy: deleting the file later cannot break a resume
                counts[param] = check_file(
                    target, kind, f"{body['filename']} ({file_id})", param, job["method"][kind].get("grader")
                )
        except FileProblem as e:
            self._fail(job, e.code, e.message, e.param)
            return
        self.store.set_example_count(job["id"], counts["training_file"])
        request = JobRequest.model_validate(self.store.request(job["id"]))
        hp = resolve(kind, request.given(), counts["training_file"])
        method = {**job["method"], kind: {**job["method"][kind], "hyperparameters": hp}}
        hyper = {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        tree = run_config(
            {**job, "method": method},
            self.bases[job["model"]],
            str(folder / "train.jsonl"),
            str(folder / "val.jsonl") if "validation_file" in counts else None,
            counts["training_file"],
            str(self.home / "runs"),
            self.probe_limit,
            self.precision,
            self.replay,
            self.bases,
        )
        atomic.write_text(folder / "config.yaml", yaml.safe_dump(tree, sort_keys=False))
        if (
            self.store.transition(
                job["id"], ("validating_files",), status="queued", method=method, hyperparameters=hyper
            )
            is None
        ):
            return  # cancelled while its files were checked
        self.store.add_event(
            job["id"],
            f"Files validated ({counts['training_file']} training examples"
            + (f", {counts['validation_file']} validation" if "validation_file" in counts else "")
            + f"); hyperparameters: {json.dumps(hp)}; moving job to queued state",
        )

    def _fail(self, job: dict, code: str, message: str, param: str | None) -> None:
        if self.store.transition(
            job["id"],
            ("validating_files", "running"),
            status="failed",
            finished_at=now(),
            estimated_finish=None,
            error={"code": code, "message": message, "param": param},
        ):
            self.store.add_event(job["id"], f"Job failed: {message}", level="error")

    # --- queued -> running -----------------------------------------------------------------------
    def _launch(self, job: dict) -> None:
        """Claim the job (queued -> running, only if it is still queued: a cancel or pause that came
        first wins), then start its worker. A cancel after the claim finds it running and stops it."""
        if self.store.transition(job["id"], ("queued",), status="running") is None:
            return
        launch = self.launch_of(job, worker_env(os.environ, self._variables(job)))
        try:
            handle = self.executor.submit(launch)
        except Exception as e:  # the cluster refused it (a partition that does not exist, an account, ...)
            self._fail(job, "submission_failed", f"{self.executor.name}: {e}".strip(), None)
            return
        self.running[job["id"]] = Worker(handle)
        self.store.set_handle(job["id"], handle)
        resumed = bool(list_checkpoints(self.run_dir(job["id"]) / "checkpoints", clean=False))
        self.store.add_event(job["id"], "Fine-tuning job resumed" if resumed else "Fine-tuning job started")

    # --- running -> succeeded | failed | cancelled | paused | queued -------------------------------
    def _watch(self, job_id: str) -> None:
        worker = self.running[job_id]
        job = self.store.existing_job(job_id)
        self._follow(job)
        request = self.store.control(job_id)
        state = self.executor.state(worker.handle)
        if state.phase == "unknown":  # the cluster cannot be asked now: ask again next tick
            return
        if state.phase != "ended":
            if state.phase == "pending" and worker.phase == "running":
                self.store.add_event(
                    job_id, f"The cluster queued the job again ({state.reason}); it resumes from its last checkpoint"
                )
            worker.phase = state.phase
            if request in ("cancel", "pause") and not worker.signalled:
                self.executor.stop(worker.handle)  # the run checkpoints after this step and exits
                worker.signalled = True
            return
        del self.running[job_id]
        self.store.set_handle(job_id, None)
        records = self._follow(job)  # what the worker wrote since the last look, before it ended
        self._ended(job, state, request, records)
        self.store.set_control(job_id, None)

    def _ended(self, job: dict, state: State, request: str | None, records: list[dict]) -> None:
        job_id = job["id"]
        if self._complete(job_id):  # finished, even if a cancel, a pause or a signal came as it exited
            self._succeed(job, records)
        elif request == "cancel":
            if self.store.transition(
                job_id, ("running",), status="cancelled", finished_at=now(), estimated_finish=None
            ):
                self.store.add_event(job_id, "Job cancelled; its checkpoints are kept")
        elif request == "pause":
            if self.store.transition(job_id, ("running",), status="paused", estimated_finish=None):
                self.store.add_event(job_id, "Job paused after writing a checkpoint; resume continues from it")
        elif state.stopped_cleanly or state.retry:  # stopped from outside, or lost with its node: run it again
            said: str | None = state.reason or "stopped on a signal after its checkpoint"
            if self.store.restarts(job_id) >= MAX_RESTARTS:
                self._fail(
                    job, "training_failed", f"stopped {MAX_RESTARTS + 1} times before finishing; last: {said}", None
                )
            elif self.store.transition(job_id, ("running",), status="queued", estimated_finish=None):
                self.store.count_restart(job_id)
                self.store.add_event(
                    job_id, f"The job stopped before finishing ({said}); it resumes from its last checkpoint"
                )
        else:
            said = _last_error(self.job_dir(job_id) / LOG)
            if state.code is None and state.reason:  # the cluster ended it (e.g. an operator's scancel), not the run
                said = f"{state.reason}" + (f"; the worker's last line: {said}" if said else "")
            self._fail(
                job, "training_failed", said or state.reason or "the training process failed without output", None
            )

    def _complete(self, job_id: str) -> bool:
        """The run wrote its summary and report: it is done (what tunesmith's own --resume checks)."""
        run_dir = self.run_dir(job_id)
        return (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file()

    def _follow(self, job: dict) -> list[dict]:
        """Read the run's metrics.jsonl once; its new records become events, its new checkpoints
        listed ones. Returns the records."""
        records = read_metrics(self.run_dir(job["id"]) / "metrics.jsonl")
        self._new_metrics(job, records)
        self._new_checkpoints(job, records)
        return records

    def _new_metrics(self, job: dict, records: list[dict]) -> None:
        last = self.store.last_metrics_step(job["id"])
        total = self._total_steps(job)
        for record in records:
            if record["step"] <= last:
                continue
            data = {**metrics_of(record), "total_steps": total}
            text = f"Step {record['step']}/{total}: training loss={record['loss']:.4f}"
            if "val_loss" in record:
                text += f", validation loss={record['val_loss']:.4f}"
            self.store.add_event(job["id"], text, data=data, kind="metrics")
        if records and total:
            done = records[-1]["step"]
            per_step = records[-1].get("elapsed_s", 0) / max(1, done)
            self.store.update_job(
                job["id"], estimated_finish=now() + int(per_step * (total - done)) if done < total else None
            )

    def _total_steps(self, job: dict) -> int | None:
        """The steps the run takes, as it published them (replay and every other setting counted),
        or, before it has, the job's examples, batch size and epochs."""
        try:
            return int(json.loads((self.run_dir(job["id"]) / PLAN).read_text())["total_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        hp = job["method"][job["method"]["type"]]["hyperparameters"]
        count = self.store.example_count(job["id"])
        if count is None:
            return None
        return steps_per_epoch(count, hp["batch_size"]) * hp["n_epochs"]

    def _new_checkpoints(self, job: dict, records: list[dict]) -> None:
        by_step = {r["step"]: r for r in records}
        on_disk = {}
        for folder in list_checkpoints(self.run_dir(job["id"]) / "checkpoints", clean=False):  # the worker is writing
            if (folder / ADAPTER / "adapter_config.json").is_file():
                on_disk[int(folder.name.split("-")[1])] = folder / ADAPTER
        listed = {c["step_number"] for c in self.store.checkpoints(job["id"])}
        final = self.store.final_step(job["id"])
        for step in sorted(set(on_disk) - listed):
            metrics = metrics_of(by_step.get(step, {"step": step}))
            self.store.add_checkpoint(job["id"], step, checkpoint_name(job, step), str(on_disk[step]), metrics)
        for step in listed - set(on_disk) - {final}:  # the run keeps its newest few; older ones are gone
            self.store.drop_checkpoint(job["id"], step)
            self.on_removed(checkpoint_name(job, step))

    def _succeed(self, job: dict, records: list[dict]) -> None:
        """The finished run (its `records` read from metrics.jsonl) becomes the job's model."""
        run_dir = self.run_dir(job["id"])
        summary = json.loads((run_dir / "summary.json").read_text())
        name = ft_model_name(job)
        tenant = self.store.owner_of(job["id"])
        final_step = summary["steps"]
        self.store.add_checkpoint(
            job["id"],
            final_step,
            checkpoint_name(job, final_step),
            str(run_dir / "final"),
            metrics_of(next((r for r in reversed(records) if r["step"] == final_step), {"step": final_step})),
        )
        self.store.set_final_step(job["id"], final_step)
        results = self.files.save_bytes(tenant, "step_metrics.csv", "fine-tune-results", _metrics_csv(records))
        self.store.add_model(name, tenant, job["model"], str(run_dir / "final"), job["id"])
        self.store.transition(
            job["id"],
            ("running",),
            status="succeeded",
            finished_at=now(),
            estimated_finish=None,
            fine_tuned_model=name,
            trained_tokens=int(summary.get("tokens") or 0),
            result_files=[results["id"]],
        )
        self.store.add_event(job["id"], f"New fine-tuned model created: {name}")
        self.store.add_event(job["id"], "The job has successfully completed")


def fair_turns(
    queue: list[tuple[str, dict]],
    running: Counter,
    free: int,
    limit_of: Callable[[str], int | None],
    turns: dict[str, int],
) -> list[dict]:
    """The queued jobs (`queue`: (tenant, job), oldest first) to start in `free` slots, round-robin:
    each slot to the tenant with the fewest jobs running, then the one whose turn came longest ago
    (`turns`: tenant -> when its last job started, updated here; never: first), then the one with
    the oldest job; none past its `max_running_jobs`; each tenant's jobs in the order they came. So
    one tenant's 50 queued jobs take turns with another's one instead of going ahead of it."""
    waiting: dict[str, list[dict]] = {}
    for tenant, job in queue:
        waiting.setdefault(tenant, []).append(job)
    order = {tenant: i for i, tenant in enumerate(waiting)}
    running, picked = Counter(running), []
    while free > 0:
        ready = [t for t, jobs in waiting.items() if jobs and ((cap := limit_of(t)) is None or running[t] < cap)]
        if not ready:
            break
        tenant = min(ready, key=lambda t: (running[t], turns.get(t, -1), order[t]))
        picked.append(waiting[tenant].pop(0))
        running[tenant] += 1
        turns[tenant] = max(turns.values(), default=-1) + 1
        free -= 1
    return picked


def _metrics_csv(records: list[dict]) -> bytes:
    """The per-step results file OpenAI attaches to a job."""
    columns = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow(metrics_of(record))
    return out.getvalue().encode()


def _last_error(path: Path) -> str | None:
    """What the worker said last: tunesmith's one-line `error: ...` when there is one."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return (
            f"no {path.name} in {path.parent}: the worker never started there (on a cluster: is --home on a "
            "filesystem every node sees at the same path?)"
        )
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else None)
