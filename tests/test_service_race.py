"""Cancel and pause against a job being launched, driven step by step so each interleaving is the
one intended: a cancelled job never trains on, a paused one never starts. The service runs in
this process (its API through FastAPI's TestClient); the scheduler's thread is not started, the
test calls its steps itself; the workers are real `tunesmith train` processes."""

import time

import pytest

from tunesmith.service import build_service


@pytest.fixture
def service(tmp_path, tiny_model_dir, date_data):
    from fastapi.testclient import TestClient

    svc = build_service(tmp_path / "home", [str(tiny_model_dir)], precision="fp32")
    http = TestClient(svc.app)
    with date_data["train"].open("rb") as f:
        file_id = http.post("/v1/files", files={"file": ("train.jsonl", f)}, data={"purpose": "fine-tune"}).json()["id"]

    def new_job() -> str:
        job = http.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": tiny_model_dir.name,
                "training_file": file_id,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 8}}},
            },
        ).json()
        for validating in svc.store.jobs(None, ("validating_files",)):
            svc.scheduler._validate(validating)
        assert svc.store.job(job["id"])["status"] == "queued"
        return job["id"]

    yield svc, http, new_job
    svc.scheduler.stop()


def follow(svc, job_id, timeout=120):
    """Watch the job's worker until it exits, as the scheduler's loop would, checking at every
    look that the job is never cancelled or paused while its worker still runs."""
    deadline = time.time() + timeout
    while job_id in svc.scheduler.running:
        assert time.time() < deadline, "the worker did not stop"
        process = svc.scheduler.executor.processes.get(svc.scheduler.running[job_id].handle)
        status = svc.store.job(job_id)["status"]
        alive = process is not None and process.poll() is None
        assert not (status in ("cancelled", "paused") and alive), f"{status} but its worker trains on"
        svc.scheduler._watch(job_id)
        time.sleep(0.1)


def test_a_cancel_before_the_launch_claims_the_job_means_it_never_starts(service):
    svc, http, new_job = service
    job_id = new_job()
    seen = svc.store.jobs(None, ("queued",), oldest_first=True)[0]  # the scheduler looked: queued
    assert http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"  # then the cancel came
    svc.scheduler._launch(seen)  # then the launch, from what it saw
    assert job_id not in svc.scheduler.running and svc.store.handle(job_id) is None
    assert svc.store.job(job_id)["status"] == "cancelled"
    assert not (svc.scheduler.run_dir(job_id) / "metrics.jsonl").exists()


@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_a_launch_between_the_apis_look_and_its_write_is_stopped_not_overwritten(service, monkeypatch, action):
    """The API reads the job (queued); before it writes, the scheduler launches it. The API's
    write is conditional, so it asks the running worker to stop instead of marking a training job
    cancelled or paused; the worker checkpoints and exits, and only then is the job so marked."""
    svc, http, new_job = service
    job_id = new_job()
    looked = []
    real_job = svc.store.job

    def look_then_launch(jid, tenant=None):
        found = real_job(jid, tenant)
        if tenant is not None and not looked:  # the API's look
            looked.append(found["status"])
            svc.scheduler._launch(real_job(jid))  # the launch comes right after it
        return found

    monkeypatch.setattr(svc.store, "job", look_then_launch)
    answer = http.post(f"/v1/fine_tuning/jobs/{job_id}/{action}").json()
    monkeypatch.setattr(svc.store, "job", real_job)
    assert looked == ["queued"] and answer["status"] == "running"  # it says what is true: running, asked to stop
    assert svc.store.control(job_id) == action
    follow(svc, job_id)
    assert svc.store.job(job_id)["status"] == {"cancel": "cancelled", "pause": "paused"}[action]
    assert job_id not in svc.scheduler.running and svc.store.handle(job_id) is None


def test_a_cancel_during_validation_is_not_undone_by_the_validation(service, tmp_path, tiny_model_dir):
    svc, http, _ = service
    file_id = http.get("/v1/files").json()["data"][0]["id"]
    job = http.post("/v1/fine_tuning/jobs", json={"model": tiny_model_dir.name, "training_file": file_id}).json()
    seen = svc.store.jobs(None, ("validating_files",))[0]
    assert http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    svc.scheduler._validate(seen)  # the file check the scheduler had started
    assert svc.store.job(job["id"])["status"] == "cancelled"


def test_turns_go_round_the_tenants_and_respect_their_limits():
    from collections import Counter

    from tunesmith.service.scheduler import fair_turns

    queue = (
        [("alice", {"id": f"a{i}"}) for i in range(20)]
        + [("bob", {"id": "b0"})]
        + [("carol", {"id": f"c{i}"}) for i in range(2)]
    )
    turns: dict = {}
    started = []
    for _ in range(6):  # one slot at a time, each job finishing before the next starts
        [job] = fair_turns([q for q in queue if q[1]["id"] not in started], Counter(), 1, lambda t: None, turns)
        started.append(job["id"])
    assert started == ["a0", "b0", "c0", "a1", "c1", "a2"]
    two = fair_turns(queue, Counter(), 3, lambda t: 1 if t == "alice" else None, {})
    assert [j["id"] for j in two] == ["a0", "b0", "c0"]
    assert fair_turns(queue, Counter({"alice": 1}), 2, lambda t: 1 if t == "alice" else None, {}) == [
        {"id": "b0"},
        {"id": "c0"},
    ]


def test_one_tenants_twenty_jobs_do_not_starve_anothers_one(tmp_path, tiny_model_dir, date_data):
    """Alice queues 20 jobs, then Bob one, on a one-worker service: Bob's starts in the slot
    Alice's first job frees."""
    from fastapi.testclient import TestClient

    keys = tmp_path / "keys.txt"
    keys.write_text("alice-key-0123456789abcdef alice\nbob-key-0123456789abcdefgh bob\n")
    svc = build_service(tmp_path / "home", [str(tiny_model_dir)], keys_file=keys, precision="fp32")
    http = TestClient(svc.app)
    auth = {
        name: {"Authorization": f"Bearer {name}-key-0123456789abcdef{'gh' if name == 'bob' else ''}"}
        for name in ("alice", "bob")
    }
    jobs = {}
    for name, count in (("alice", 20), ("bob", 1)):
        with date_data["train"].open("rb") as f:
            file_id = http.post(
                "/v1/files", files={"file": ("train.jsonl", f)}, data={"purpose": "fine-tune"}, headers=auth[name]
            ).json()["id"]
        jobs[name] = [
            http.post(
                "/v1/fine_tuning/jobs",
                headers=auth[name],
                json={
                    "model": tiny_model_dir.name,
                    "training_file": file_id,
                    "method": {
                        "type": "supervised",
                        "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 8}},
                    },
                },
            ).json()["id"]
            for _ in range(count)
        ]
    try:
        svc.scheduler.tick()  # validates every job, starts the oldest: Alice's first
        assert list(svc.scheduler.running) == [jobs["alice"][0]]
        http.post(f"/v1/fine_tuning/jobs/{jobs['alice'][0]}/cancel", headers=auth["alice"])
        follow(svc, jobs["alice"][0])
        svc.scheduler.tick()  # the freed slot
        assert list(svc.scheduler.running) == [jobs["bob"][0]]
        assert [svc.store.job(j)["status"] for j in jobs["alice"][1:]] == ["queued"] * 19
    finally:
        svc.scheduler.stop()


def test_a_job_left_on_a_cluster_the_service_no_longer_uses_is_queued_again(service):
    """Restarted without --cluster, the service cannot follow a job its Slurm executor started:
    the job is queued again (to resume here) instead of the restart failing."""
    svc, http, new_job = service
    job_id = new_job()
    svc.store.transition(job_id, ("queued",), status="running")
    svc.store.set_handle(job_id, "slurm:123:/shared/jobs/x")
    svc.scheduler._recover()
    assert svc.store.job(job_id)["status"] == "queued" and svc.store.handle(job_id) is None
