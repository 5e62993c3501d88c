"""The trust boundary of `tunesmith service`: what a hostile tenant tries, against a live service
with two keys, and what stops it. Code graders run under Debian's bubblewrap (installed by
.ci/run; these tests skip saying so where it is missing)."""

import json
import os
import shutil
import socket
import threading
import time

import pytest
from helpers import cli_env, start_server

openai = pytest.importorskip("openai")

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdefgh"}
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="needs Debian's bubblewrap (apt-get install bubblewrap), as .ci/run installs it",
)


def reinforcement_file(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Write the number {i} in digits."}], "reference_answer": str(i)}
        for i in range(12)
    ]
    path = tmp_path / "rft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Listener:
    """A TCP listener on this machine's loopback that records every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port, self.seen, self.stop = self.sock.getsockname()[1], [], threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                self.seen.append(conn.recv(65536))
            except OSError:
                self.seen.append(b"")
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            except OSError:
                pass
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir):
    """A service with two tenants: alice may run code and endpoint graders with GRADER_KEY; bob may not.
    The server's environment holds a secret no worker may see."""
    root = tmp_path_factory.mktemp("boundary")
    keys, tenants, home = root / "keys.txt", root / "tenants.yaml", root / "home"
    keys.write_text("".join(f"{k} {name}\n" for name, k in KEYS.items()))
    tenants.write_text(
        "tenants:\n  alice: {python_graders: true, endpoint_graders: true, api_key_envs: [GRADER_KEY]}\n"
    )
    env = {**cli_env(root), "SERVER_SECRET": "s3cr3t-of-the-server", "GRADER_KEY": "key-for-alices-grader"}
    line, proc = start_server(
        [
            "service",
            "--port",
            "0",
            "--home",
            str(home),
            "--model",
            str(tiny_model_dir),
            "--precision",
            "fp32",
            "--probe-limit",
            "0",
            "--max-tokens",
            "16",
            "--workers",
            "2",
            "--api-keys-file",
            str(keys),
            "--tenants",
            str(tenants),
        ],
        root,
        env,
    )
    url = line.split(" at ")[1].split()[0]
    clients = {n: openai.OpenAI(base_url=url, api_key=k, max_retries=0, timeout=60) for n, k in KEYS.items()}
    yield {"url": url, "proc": proc, "home": home, "base": tiny_model_dir.name, "root": root, **clients}
    proc.terminate()
    proc.wait(timeout=60)


def grader_job(client, live, grader, epochs=1):
    with reinforcement_file(live["root"]).open("rb") as f:
        uploaded = client.files.create(file=("rft.jsonl", f), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=live["base"],
        training_file=uploaded.id,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": epochs, "batch_size": 4}},
        },
    )


def wait_for(client, job_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    pytest.fail(f"{job_id} still {job.status}")


def python_grader(name, body):
    return {
        "type": "python",
        "name": name,
        "source": f"import os, socket\ndef grade(sample, item):\n{body}\n    return 1.0\n",
    }


@needs_bwrap
def test_hostile_python_graders_are_denied_and_fail_their_job(live):
    alice, home = live["alice"], live["home"]
    marker = "/usr/local/escaped-grader.txt"  # what the write grader tries to create
    if os.path.exists(marker):
        os.remove(marker)  # left by a run against a broken sandbox
    listener = Listener()
    try:
        jobs = {
            "keys": (
                python_grader("keys", f"    open({str(home / 'service.db')!r}, 'rb').read()"),
                "FileNotFoundError",
            ),
            "home": (python_grader("home", f"    os.listdir({str(home)!r})"), "FileNotFoundError"),
            "net": (
                python_grader("net", f"    socket.create_connection(('127.0.0.1', {listener.port}), timeout=3)"),
                "ConnectionRefusedError",
            ),
            "write": (python_grader("write", f"    open({marker!r}, 'w').write('x')"), "Read-only file system"),
        }
        # the sandbox is no blanket refusal: an honest grader in the same service trains; and its
        # config must say bubblewrap before a fork bomb is let near this machine
        honest = grader_job(
            alice, live, python_grader("honest", "    int(sample['output_text'] == item['reference_answer'])")
        )
        assert wait_for(alice, honest.id).status == "succeeded"
        assert "sandbox: bubblewrap" in (home / "jobs" / honest.id / "config.yaml").read_text()
        if os.geteuid() == 0:  # the sandbox's own user, and with it the process limit, needs a service run by root
            jobs["fork"] = (
                python_grader("fork", "    while True:\n        os.fork()"),
                "Resource temporarily unavailable",
            )
        started = {name: grader_job(alice, live, grader) for name, (grader, _) in jobs.items()}
        for name, job in started.items():
            done = wait_for(alice, job.id)
            assert done.status == "failed", (name, done.status)
            assert f"grader {name}: failed on every one of" in done.error.message, done.error.message
            assert jobs[name][1] in done.error.message, done.error.message
            assert alice.models.list().data  # the service answers the next request
        assert listener.seen == []  # no connection reached this machine's loopback
        assert not os.path.exists(marker)
    finally:
        listener.close()


def test_graders_beyond_a_tenants_policy_are_refused_with_400(live):
    bob, alice = live["bob"], live["alice"]
    cases = [
        (
            bob,
            python_grader("mine", "    pass"),
            "grader 'mine' is a python grader (code); tenant 'bob' may not run code graders on this server",
            "python_graders: true",
        ),
        (
            bob,
            {
                "type": "score_model",
                "name": "judge",
                "model": "gpt-4o",
                "base_url": "http://127.0.0.1:9/v1",
                "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            },
            "grader 'judge' calls an endpoint",
            "endpoint_graders: true",
        ),
        (
            alice,
            {
                "type": "score_model",
                "name": "leak",
                "model": "m",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "HOME",
                "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            },
            "grader 'leak': api_key_env 'HOME' is not a variable tenant 'alice' may use",
            "api_key_envs",
        ),
        (
            alice,
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "a",
                "graders": {
                    "a": {
                        "type": "score_model",
                        "name": "a",
                        "model": "m",
                        "base_url": "http://127.0.0.1:9/v1",
                        "api_key_env": "SERVER_SECRET",
                        "input": [{"role": "user", "content": "x"}],
                    }
                },
            },
            "api_key_env 'SERVER_SECRET'",
            "api_key_envs",
        ),
        (
            alice,
            {
                "type": "score_model",
                "name": "other",
                "model": str(live["home"] / "runs"),
                "input": [{"role": "user", "content": "x"}],
            },
            "is not a model this server grades with",
            "base models",
        ),
    ]
    for client, grader, message, setting in cases:
        with pytest.raises(openai.BadRequestError) as e:
            grader_job(client, live, grader)
        assert e.value.status_code == 400 and message in e.value.body["message"] and setting in e.value.body["message"]
        assert e.value.body["param"] == "method.reinforcement.grader"
    assert bob.fine_tuning.jobs.list().data == []  # nothing was created
    assert bob.models.list().data  # and the service keeps serving


def test_an_endpoint_grader_gets_its_allowed_key_and_the_worker_nothing_else(live):
    """alice's score_model grader calls a listener with GRADER_KEY, the one variable her policy
    lists; the worker's environment holds that and not the server's secret."""
    alice = live["alice"]
    listener = Listener()
    try:
        grader = {
            "type": "score_model",
            "name": "judge",
            "model": "judge-model",
            "api_key_env": "GRADER_KEY",
            "base_url": f"http://127.0.0.1:{listener.port}/v1",
            "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        }
        job = grader_job(alice, live, grader, epochs=40)
        environ = None
        deadline = time.time() + 120
        while environ is None and time.time() < deadline:
            pid = worker_pid(live["home"], job.id)
            if pid:
                try:
                    environ = dict(v.split("=", 1) for v in open(f"/proc/{pid}/environ").read().split("\0") if "=" in v)
                except OSError:
                    pass
            time.sleep(0.2)
        while not listener.seen and time.time() < deadline:
            time.sleep(0.2)
        try:
            alice.fine_tuning.jobs.cancel(job.id)
        except openai.BadRequestError:
            pass  # it failed already (the listener is no model server): what it sent is what counts
        assert environ is not None, "the job's worker never ran"
        assert environ.get("GRADER_KEY") == "key-for-alices-grader" and "SERVER_SECRET" not in environ
        assert listener.seen and b"Bearer key-for-alices-grader" in listener.seen[0]
        assert all(b"s3cr3t" not in request for request in listener.seen)
        wait_for(alice, job.id)
    finally:
        listener.close()


def worker_pid(home, job_id):
    import sqlite3

    db = sqlite3.connect(home / "service.db")
    try:
        row = db.execute("SELECT handle FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return int(row[0].split(":")[1]) if row and row[0] else None  # a local worker's handle: local:PID


def test_the_local_tenant_may_use_any_grader_variable_without_a_policy_file(tmp_path, tiny_model_dir):
    """Without keys the one tenant is the operator on their own machine: its graders may name a
    variable, and the policy says so; with keys and no --tenants, nobody may."""
    from tunesmith.service import build_service

    local = build_service(tmp_path / "a", [str(tiny_model_dir)])
    assert (
        local.scheduler.policy_of("local").may_read("ANY_VARIABLE")
        and local.scheduler.policy_of("local").python_graders
    )
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEYS['alice']} alice\n")
    shared = build_service(tmp_path / "b", [str(tiny_model_dir)], keys_file=keys)
    policy = shared.scheduler.policy_of("alice")
    assert not policy.python_graders and not policy.endpoint_graders and not policy.may_read("HOME")
    (tmp_path / "t.yaml").write_text("tenants:\n  alcie: {python_graders: true}\n")
    from tunesmith.errors import UserError

    with pytest.raises(UserError, match=r"t.yaml:2: tenant 'alcie' has no key \(tenants: alice\)"):
        build_service(tmp_path / "c", [str(tiny_model_dir)], keys_file=keys, tenants_file=tmp_path / "t.yaml")
    (tmp_path / "u.yaml").write_text("default:\n  python_grader: true\n")
    with pytest.raises(UserError, match=r"u.yaml:2: unknown key 'default.python_grader'"):
        build_service(tmp_path / "d", [str(tiny_model_dir)], keys_file=keys, tenants_file=tmp_path / "u.yaml")
    assert os.environ.get("SERVER_SECRET") is None


def test_a_tenants_stored_bytes_are_limited_and_an_upload_past_it_leaves_nothing(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunesmith.service import build_service

    keys, tenants = tmp_path / "keys.txt", tmp_path / "tenants.yaml"
    keys.write_text(f"{KEYS['alice']} alice\n{KEYS['bob']} bob\n")
    tenants.write_text("tenants:\n  alice: {max_stored_mb: 1}\n")
    svc = build_service(tmp_path / "home", [str(tiny_model_dir)], keys_file=keys, tenants_file=tenants)
    http = TestClient(svc.app)
    line = (
        json.dumps({"messages": [{"role": "user", "content": "q" * 200}, {"role": "assistant", "content": "a"}]}) + "\n"
    )
    body = (line * (600_000 // len(line))).encode()

    def put(tenant):
        return http.post(
            "/v1/files",
            files={"file": ("t.jsonl", body)},
            data={"purpose": "fine-tune"},
            headers={"Authorization": f"Bearer {KEYS[tenant]}"},
        )

    assert put("alice").status_code == 200
    refused = put("alice")
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "storage_limit_exceeded"
    assert "past its 1 MB of stored files" in refused.json()["error"]["message"]
    assert len(svc.store.files("alice")) == 1 and not list((tmp_path / "home" / "files").glob(".upload-*"))
    assert put("bob").status_code == 200 and put("bob").status_code == 200  # bob has no limit
