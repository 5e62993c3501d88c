"""`tunesmith service --cluster` on real clusters started by the tests on this machine: a one-node
Slurm cluster (slurmctld, slurmd, munge) and a one-node Ray cluster. Through the openai client:
a job runs as the cluster's job and its model answers; a job the cluster stops mid-run (Slurm's
`scontrol requeue`, `scancel --signal=TERM`; a Ray job's process killed) resumes and ends with
the adapter of the same job run without interruption (CPU, fp32); a job that ends while the
service is down is found finished when it starts again."""

import re
import signal
import time
from pathlib import Path

import pytest
from clusters import ray_cluster, slurm_cluster
from helpers import cli_env, start_server
from test_service import stop_service, upload, wait_for, wait_for_step

openai = pytest.importorskip("openai")
# one Slurm and one Ray cluster for the module: its tests run on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("clusters")

HP = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 12, "batch_size": 8}}}  # 144 steps


def start_cluster_service(home: Path, model_dir: Path, cluster_yaml: str, env_extra: dict):
    home.mkdir(parents=True, exist_ok=True)
    (home.parent / "cluster.yaml").write_text(cluster_yaml)
    line, proc = start_server(
        [
            "service",
            "--port",
            "0",
            "--home",
            home.name,
            "--model",
            str(model_dir),
            "--precision",
            "fp32",
            "--probe-limit",
            "0",
            "--max-tokens",
            "16",
            "--workers",
            "2",
            "--cluster",
            "cluster.yaml",
        ],
        home.parent,
        {**cli_env(home.parent), **env_extra},
    )
    url = line.split(" at ")[1].split()[0]
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60), proc


def adapter(home: Path, job_id: str) -> dict:
    from safetensors.torch import load_file

    return load_file(home / "runs" / job_id / "final" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def resumed_at(home: Path, job_id: str) -> list[int]:
    """The steps the job's worker resumed from, in order, as its log says ("resumed from ... (step N)")."""
    return [
        int(m)
        for m in re.findall(
            r"^resumed from .* \(step (\d+)\)$", (home / "jobs" / job_id / "worker.log").read_text(), re.MULTILINE
        )
    ]


def messages(client, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=200)))]


def metric_steps(client, job_id: str) -> list[int]:
    return [
        e.data["step"]
        for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=200)))
        if e.type == "metrics"
    ]


# --- Slurm ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = slurm_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def slurm_job_of(slurm, job_id: str) -> str:
    """The Slurm job id of a service job, from Slurm's accounting (by the name the service gives it)."""
    ids = {row[0] for row in slurm.accounted("--allocations", "--name", f"tunesmith-{job_id}", "--format", "JobID")}
    assert len(ids) == 1, f"slurm jobs named tunesmith-{job_id}: {ids}"
    return ids.pop()


def runs_of(slurm, job: str) -> list[str]:
    """The states of each run of a Slurm job in its accounting, in order (a requeued run: REQUEUED)."""
    return [
        row[0].split()[0]
        for row in slurm.accounted("--allocations", "--duplicates", "--jobs", job, "--format", "State")
    ]


def forgotten(slurm, job: str, timeout: float = 150) -> None:
    """Wait until the controller forgets a finished job (MinJobAge, then its purge pass): only accounting knows it."""
    deadline = time.time() + timeout
    while slurm.run("squeue", "--noheader", "--states", "all", "--jobs", job).returncode == 0:
        assert time.time() < deadline, f"slurmctld still holds job {job}"
        time.sleep(2)


def test_slurm_jobs_run_on_the_cluster_and_resume_exactly_after_requeue_and_sigterm(
    slurm, tmp_path, tiny_model_dir, date_data
):
    home = tmp_path / "home"
    client, proc = start_cluster_service(
        home, tiny_model_dir, "executor: slurm\nslurm: {time: '00:30:00'}\n", {"SLURM_CONF": str(slurm.conf)}
    )
    try:
        f = upload(client, date_data["train"])
        requeued = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
        whole = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
        wait_for_step(client, requeued.id, 8)
        first = slurm_job_of(slurm, requeued.id)
        assert "RUNNING" in slurm.run("scontrol", "show", "job", first).stdout
        assert slurm.run("scontrol", "requeue", first).returncode == 0  # as an operator or a node failure would
        done = wait_for(client, requeued.id, timeout=420)
        assert done.status == "succeeded", done.error
        assert wait_for(client, whole.id, timeout=300).status == "succeeded"
        assert runs_of(slurm, first) == ["REQUEUED", "COMPLETED"]  # one Slurm job, run twice, as sacct shows it
        assert runs_of(slurm, slurm_job_of(slurm, whole.id)) == ["COMPLETED"]
        events = messages(client, requeued.id)
        assert any(m.startswith("The cluster queued the job again") for m in events), events
        assert len(resumed_at(home, requeued.id)) == 1 and resumed_at(home, requeued.id)[0] >= 8
        assert_same_adapter(adapter(home, requeued.id), adapter(home, whole.id))

        signalled = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
        wait_for_step(client, signalled.id, 30)
        job = slurm_job_of(slurm, signalled.id)
        assert slurm.run("scancel", "--signal=TERM", job).returncode == 0  # the time limit's or a preemption's warning
        done = wait_for(client, signalled.id, timeout=420)
        assert done.status == "succeeded", done.error
        assert runs_of(slurm, job) == ["REQUEUED", "COMPLETED"]  # the script queued itself again
        assert len(resumed_at(home, signalled.id)) == 1 and resumed_at(home, signalled.id)[0] >= 30
        steps = metric_steps(client, signalled.id)
        assert sorted(set(steps)) == list(range(1, 145))
        assert_same_adapter(adapter(home, signalled.id), adapter(home, whole.id))

        answer = client.chat.completions.create(
            model=done.fine_tuned_model, max_tokens=8, messages=[{"role": "user", "content": "Date: 3 March 2021"}]
        )
        assert answer.choices[0].message.content is not None
    finally:
        stop_service(proc)


def test_slurm_jobs_go_on_while_the_service_is_down_and_are_found_again(slurm, tmp_path, tiny_model_dir, date_data):
    """One job ends while the service is down, one is still training when it starts again: the
    first is found finished, the second followed to its end, each one Slurm job (none submitted twice)."""
    home = tmp_path / "home"
    cluster = "executor: slurm\n"
    client, proc = start_cluster_service(home, tiny_model_dir, cluster, {"SLURM_CONF": str(slurm.conf)})
    f = upload(client, date_data["train"])
    short = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
    long = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=f.id,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 24, "batch_size": 8}}},
    )
    wait_for_step(client, short.id, 4)
    wait_for_step(client, long.id, 4)
    stop_service(proc)  # the service goes; its jobs train on in Slurm
    short_job, long_job = slurm_job_of(slurm, short.id), slurm_job_of(slurm, long.id)
    deadline = time.time() + 300
    while slurm.job_state(short_job) != "COMPLETED":
        assert time.time() < deadline, slurm.job_state(short_job)
        time.sleep(1)
    assert slurm.job_state(long_job) == "RUNNING"
    # held (SIGSTOP) while the service starts again, so that it is surely still training then, however
    # slowly a busy machine starts the service; let go once the service follows it
    assert slurm.run("scontrol", "suspend", long_job).returncode == 0
    client, proc = start_cluster_service(home, tiny_model_dir, cluster, {"SLURM_CONF": str(slurm.conf)})
    try:
        assert wait_for(client, short.id, timeout=60).status == "succeeded"
        deadline = time.time() + 60
        while "The service restarted; following the job on the slurm cluster" not in messages(client, long.id):
            assert time.time() < deadline, messages(client, long.id)
            time.sleep(0.5)
        assert slurm.run("scontrol", "resume", long_job).returncode == 0
        done = wait_for(client, long.id, timeout=420)
        assert done.status == "succeeded", done.error
        assert "The service restarted; following the job on the slurm cluster" in messages(client, long.id)
        assert sorted(set(metric_steps(client, long.id))) == list(range(1, 289))
        assert slurm_job_of(slurm, short.id) == short_job and slurm_job_of(slurm, long.id) == long_job
        assert runs_of(slurm, long_job) == ["COMPLETED"]  # followed, never submitted or queued again
    finally:
        stop_service(proc)


def test_a_job_slurm_cancelled_while_the_service_was_down_is_failed_from_slurms_accounting(
    slurm, tmp_path, tiny_model_dir, date_data
):
    """An operator's `scancel` while the service is down, found after the controller has forgotten
    the job: only `sacct` can say it was cancelled (it left no exit file), so the job fails naming
    that instead of being taken for a lost node and trained again."""
    home = tmp_path / "home"
    client, proc = start_cluster_service(home, tiny_model_dir, "executor: slurm\n", {"SLURM_CONF": str(slurm.conf)})
    f = upload(client, date_data["train"])
    job = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
    wait_for_step(client, job.id, 4)
    stop_service(proc)
    slurm_job = slurm_job_of(slurm, job.id)
    assert slurm.run("scancel", slurm_job).returncode == 0
    forgotten(slurm, slurm_job)
    assert runs_of(slurm, slurm_job) == ["CANCELLED"] and not list((home / "jobs" / job.id).glob("slurm-exit-*"))
    client, proc = start_cluster_service(home, tiny_model_dir, "executor: slurm\n", {"SLURM_CONF": str(slurm.conf)})
    try:
        done = wait_for(client, job.id, timeout=120)
        assert done.status == "failed" and "cancelled in Slurm (scancel)" in done.error.message, (
            done.status,
            done.error,
        )
        assert resumed_at(home, job.id) == [] and runs_of(slurm, slurm_job) == ["CANCELLED"]
    finally:
        stop_service(proc)


# --- Ray --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray():
    cluster = ray_cluster()
    yield cluster
    cluster.stop()


def training_pid(job_folder: Path) -> int | None:
    """The pid of the process training a job (its command line names the job's config)."""
    config = str(job_folder / "config.yaml")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tunesmith" in argv and config.encode() in argv and b"train" in argv:
                return int(entry.name)
    return None


def test_ray_jobs_run_on_the_cluster_and_resume_exactly_when_killed(ray, tmp_path, tiny_model_dir, date_data):
    from ray.job_submission import JobSubmissionClient

    home = tmp_path / "home"
    client, proc = start_cluster_service(
        home, tiny_model_dir, f"executor: ray\naddress: {ray.address}\nray: {{num_cpus: 1}}\n", {}
    )
    try:
        f = upload(client, date_data["train"])
        killed = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
        whole = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=HP)
        wait_for_step(client, killed.id, 15)  # past the first epoch's checkpoint (step 12)
        pid = training_pid(home / "jobs" / killed.id)
        assert pid is not None
        ours = [
            j
            for j in JobSubmissionClient(ray.address).list_jobs()
            if (j.metadata or {}).get("tunesmith_job") == killed.id
        ]
        assert [j.status for j in ours] == ["RUNNING"]
        import os

        os.kill(pid, signal.SIGKILL)  # as if its node went away: no checkpoint of its own
        done = wait_for(client, killed.id, timeout=420)
        assert done.status == "succeeded", done.error
        assert wait_for(client, whole.id, timeout=300).status == "succeeded"
        events = messages(client, killed.id)
        assert any(m.startswith("The job stopped before finishing (ray job") for m in events), events
        resumed = resumed_at(home, killed.id)  # once, from the last epoch's checkpoint (every 12 steps) before the kill
        assert len(resumed) == 1 and resumed[0] >= 12 and resumed[0] % 12 == 0, resumed
        ours = [
            j
            for j in JobSubmissionClient(ray.address).list_jobs()
            if (j.metadata or {}).get("tunesmith_job") == killed.id
        ]
        assert sorted(str(j.status) for j in ours) == ["FAILED", "SUCCEEDED"]
        assert_same_adapter(adapter(home, killed.id), adapter(home, whole.id))
    finally:
        stop_service(proc)


def test_a_slurm_job_of_two_tasks_trains_as_two_ranks_like_one_process(slurm, tmp_path, tiny_model_dir, date_data):
    """tasks_per_node: 2 runs the job as two training processes (Slurm's ranks as torchrun's);
    its adapter follows the one-process job's."""
    import torch

    home = tmp_path / "home"
    env = {"SLURM_CONF": str(slurm.conf)}
    hp = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}}
    client, proc = start_cluster_service(home, tiny_model_dir, "executor: slurm\nslurm: {tasks_per_node: 2}\n", env)
    try:
        f = upload(client, date_data["train"])
        two = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=hp)
        done = wait_for(client, two.id, timeout=300)
        assert done.status == "succeeded", done.error
        steps = slurm.accounted("--jobs", slurm_job_of(slurm, two.id), "--format", "JobID,NTasks")
        assert [n for step, n in steps if step.endswith(".0")] == ["2"]  # srun's step: two tasks
        assert "2 processes (ddp)" in (home / "jobs" / two.id / "worker.log").read_text()  # one run of two ranks
    finally:
        stop_service(proc)
    client, proc = start_cluster_service(home, tiny_model_dir, "executor: slurm\n", env)
    try:
        one = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=3, method=hp)
        assert wait_for(client, one.id, timeout=300).status == "succeeded"
    finally:
        stop_service(proc)
    a, b = adapter(home, two.id), adapter(home, one.id)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert any(not a[k].equal(torch.zeros_like(a[k])) for k in a)


# --- the cluster file and the batch script (no cluster needed) ---------------------------------------
def test_the_batch_script_places_each_job_by_model_and_tenant(tmp_path):
    from tunesmith.service.cluster import read_cluster
    from tunesmith.service.executors import Launch
    from tunesmith.service.executors.slurm import batch_script

    path = tmp_path / "cluster.yaml"
    path.write_text(
        "executor: slurm\npython: /shared/venv/bin/python\nslurm: {partition: gpu, gpus_per_node: 1, time: "
        "'08:00:00'}\n"
        "models:\n  small: {partition: cpu, gpus_per_node: 0}\ntenants:\n  research: {account: lab, nodes: 2, "
        "tasks_per_node: 4}\n"
    )
    cluster = read_cluster(path, {"small", "big"}, {"research", "ops"})
    launch = Launch("ftjob-1", Path("/shared/home/jobs/ftjob-1"), Path("/shared/home/runs/ftjob-1"), "ops", "big")
    script = batch_script(launch, cluster.placement("big", "ops"), cluster.python)
    for option in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--time=08:00:00",
        "--requeue",
        "--signal=TERM@120",
        "--chdir=/shared/home/jobs/ftjob-1",
        "--output=/shared/home/jobs/ftjob-1/worker.log",
    ):
        assert f"#SBATCH {option}\n" in script
    assert (
        "srun --export=ALL /shared/venv/bin/python -m tunesmith train /shared/home/jobs/ftjob-1/config.yaml --resume"
        in script
    )
    small = batch_script(launch, cluster.placement("small", "research"), cluster.python)
    assert "#SBATCH --partition=cpu\n" in small and "gpus-per-node" not in small and "#SBATCH --account=lab\n" in small
    assert "#SBATCH --nodes=2\n" in small and "RANK=$SLURM_PROCID" in small and "MASTER_ADDR" in small


@pytest.mark.parametrize(
    "text, message",
    [
        ("executor: slurm\nslurm: {partitoin: gpu}\n", "cluster.yaml:2: unknown key 'slurm.partitoin'"),
        ("executor: ray\n", "executor ray needs address:"),
        (
            "executor: slurm\nmodels:\n  nope: {partition: a}\n",
            "cluster.yaml:3: model 'nope' is not one of this service's",
        ),
        ("executor: slurm\ntenants:\n  ops: {gpus_per_node: -1}\n", "tenants.ops"),
        ("executor: kubernetes\n", "cluster.yaml:1: executor"),
    ],
)
def test_a_bad_cluster_file_is_one_line_naming_the_place(tmp_path, text, message):
    from tunesmith.errors import UserError
    from tunesmith.service.cluster import read_cluster

    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        read_cluster(path, {"small"}, {"ops"})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_batch_script_docs_show_is_the_one_the_service_writes():
    from tunesmith.service.cluster import SlurmPlacement
    from tunesmith.service.executors import Launch
    from tunesmith.service.executors.slurm import batch_script

    launch = Launch(
        "ftjob-abc123",
        Path("/shared/tunesmith/jobs/ftjob-abc123"),
        Path("/shared/tunesmith/runs/ftjob-abc123"),
        "research",
        "SmolLM2-135M-Instruct",
    )
    script = batch_script(
        launch, SlurmPlacement(partition="gpu", gpus_per_node=1, time="08:00:00"), "/shared/venv/bin/python"
    )
    assert f"```bash\n{script}```" in (Path(__file__).parents[1] / "docs" / "service.md").read_text()
