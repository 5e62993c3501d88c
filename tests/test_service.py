"""`tunesmith service` driven by the official openai client, unmodified, as a team moving off
OpenAI's fine-tuning would drive it: upload, create (supervised and DPO), follow events to
`succeeded`, list checkpoints, chat with the fine-tune and with a checkpoint, cancel, pause and
resume; and what it must refuse. A live server in its own process on a tiny model."""

import json
import signal
import time

import pytest
from helpers import cli_env, start_server

openai = pytest.importorskip("openai")

SMALL = {"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 6.0}  # 12 steps on 96 examples


def start_service(home, model_dir, *options):
    """`tunesmith service` on a free port, --home given relative to its working directory; returns (url, process)."""
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
            "64",
            *options,
        ],
        home.parent,
        cli_env(home.parent),
    )
    return line.split(" at ")[1].split()[0], proc


def stop_service(proc) -> None:
    proc.terminate()
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("svc") / "home"
    url, proc = start_service(home, tiny_model_dir)
    yield {"url": url, "proc": proc, "home": home, "base": tiny_model_dir.name}
    stop_service(proc)


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=service["url"], api_key="unused", max_retries=0, timeout=60)


def wait_for(client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    pytest.fail(f"{job_id} still {job.status} after {timeout} s")


def upload(client, path, name=None):
    with open(path, "rb") as f:
        return client.files.create(file=(name or path.name, f), purpose="fine-tune")


def test_supervised_job_end_to_end(client, service, date_data):
    train, val = upload(client, date_data["train"]), upload(client, date_data["val"])
    assert train.object == "file" and train.id.startswith("file-") and train.bytes == date_data["train"].stat().st_size
    assert client.files.content(train.id).read() == date_data["train"].read_bytes()
    job = client.fine_tuning.jobs.create(
        model=service["base"],
        training_file=train.id,
        validation_file=val.id,
        suffix="dates",
        seed=3,
        metadata={"team": "a"},
        method={"type": "supervised", "supervised": {"hyperparameters": SMALL}},
    )
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.seed == 3
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{service['base']}:dates:{job.id[-8:]}"
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.method.supervised.hyperparameters.n_epochs == 2

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in reversed(metrics)] == list(range(1, 13))  # newest first, every step once
    assert metrics[0].data["train_loss"] < metrics[-1].data["train_loss"]  # it learned
    assert "valid_loss" in metrics[0].data and "train_mean_token_accuracy" in metrics[0].data
    assert events[0].message == "The job has successfully completed"

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [12, 6]  # each epoch's end, newest first
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[0].metrics.train_loss is not None

    results = client.files.content(done.result_files[0]).read().decode().splitlines()
    assert results[0].startswith("step,train_loss") and len(results) == 13

    ids = [m.id for m in client.models.list()]
    assert {service["base"], done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint} <= set(ids)
    ask = [{"role": "user", "content": "Text: Tom flew to Paris on 3 May 2021. Date:"}]
    replies = {}
    for name in (service["base"], done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        r = client.chat.completions.create(model=name, messages=ask, max_tokens=12, temperature=0)
        replies[name] = r.choices[0].message.content
    assert replies[done.fine_tuned_model] != replies[service["base"]]  # the adapter answers, hot-loaded

    listed = client.fine_tuning.jobs.list(extra_query={"metadata[team]": "a"})
    assert [j.id for j in listed.data] == [job.id]
    assert client.fine_tuning.jobs.list(extra_query={"metadata[team]": "b"}).data == []
    assert client.models.delete(done.fine_tuned_model).deleted
    assert done.fine_tuned_model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=done.fine_tuned_model, messages=ask, max_tokens=4)


def test_dpo_job_trains_on_openai_dpo_records(client, service, tmp_path):
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Say a number near {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"{i}"}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }
        for i in range(24)
    ]
    path = tmp_path / "dpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = upload(client, path)
    job = client.fine_tuning.jobs.create(
        model=service["base"],
        training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 8, "beta": 0.2}}},
    )
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2
    assert done.method.dpo.hyperparameters.learning_rate_multiplier == 2.0  # "auto", resolved and reported
    r = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Say a number"}], max_tokens=4
    )
    assert r.choices[0].message.role == "assistant"


def test_reinforcement_job_trains_with_an_openai_grader(client, service, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Write the number {i} in digits."}], "reference_answer": str(i)}
        for i in range(12)
    ]
    path = tmp_path / "rft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = upload(client, path)
    grader = {
        "type": "multi",
        "name": "digits",
        "calculate_output": "0.5 * exact + 0.5 * close",
        "graders": {
            "exact": {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}",
                "operation": "eq",
            },
            "close": {
                "type": "text_similarity",
                "name": "close",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
    }
    job = client.fine_tuning.jobs.create(
        model=service["base"],
        training_file=f.id,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": 1, "batch_size": 4}},
        },
    )
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    hp = done.method.reinforcement.hyperparameters
    assert hp.compute_multiplier == 1.0 and hp.learning_rate_multiplier == 2.0  # "auto", resolved
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert len(metrics) == 3 and all(0 <= m["train_reward_mean"] <= 1 for m in metrics)  # the grader scores 0 to 1
    config = (service["home"] / "jobs" / job.id / "config.yaml").read_text()
    assert "method: grpo" in config and "string_check" in config

    rows[5].pop("reference_answer")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = upload(client, path, "rft-missing.jsonl")
    job = client.fine_tuning.jobs.create(
        model=service["base"], training_file=g.id, method={"type": "reinforcement", "reinforcement": {"grader": grader}}
    )
    done = wait_for(client, job.id, timeout=60)
    assert done.status == "failed"
    assert f"rft-missing.jsonl ({g.id}) line 6: the grader reads item.reference_answer" in done.error.message
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(
            model=service["base"],
            training_file=f.id,
            method={
                "type": "reinforcement",
                "reinforcement": {"grader": {**grader, "calculate_output": "os.system(1)"}},
            },
        )
    assert e.value.body["param"].startswith("method.reinforcement.grader")


def long_job(client, service, date_data, epochs=30):
    f = upload(client, date_data["train"])
    return client.fine_tuning.jobs.create(
        model=service["base"],
        training_file=f.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 8}}},
    )


def wait_for_step(client, job_id: str, step: int, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=5) if e.type == "metrics"]
        if metrics and metrics[0].data["step"] >= step:
            return metrics[0].data["step"]
        time.sleep(0.3)
    pytest.fail(f"{job_id} never reached step {step}")


def test_cancel_stops_a_running_job_within_seconds_keeping_its_checkpoint(client, service, date_data):
    job = long_job(client, service, date_data)
    wait_for_step(client, job.id, 3)
    asked = time.time()
    client.fine_tuning.jobs.cancel(job.id)
    done = wait_for(client, job.id, timeout=60)
    assert done.status == "cancelled" and time.time() - asked < 20
    run = service["home"] / "runs" / job.id / "checkpoints"
    assert any(run.glob("step-*/adapter/adapter_model.safetensors"))
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_then_resume_continues_from_the_checkpoint(client, service, date_data):
    job = long_job(client, service, date_data, epochs=8)  # 96 steps: still training when the pause arrives
    step = wait_for_step(client, job.id, 2)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, statuses=("paused",), timeout=60)
    assert paused.status == "paused"
    stopped_at = max(
        e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"
    )
    assert stopped_at >= step
    client.fine_tuning.jobs.resume(job.id)
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    steps = [e.data["step"] for e in reversed(events) if e.type == "metrics"]
    assert steps == list(range(1, 97))  # every step once: resumed where it stopped
    assert any(e.message == "Fine-tuning job resumed" for e in events)


def test_bad_requests_get_openai_errors_and_the_service_keeps_serving(client, service, date_data, tmp_path):
    f = upload(client, date_data["train"])
    cases = [
        (dict(model="gpt-4o-mini", training_file=f.id), "model"),
        (dict(model=service["base"], training_file="file-nope"), "training_file"),
        (dict(model=service["base"], training_file=f.id, hyperparameters={"n_epochs": 0}), "hyperparameters.n_epochs"),
        (
            dict(
                model=service["base"],
                training_file=f.id,
                method={"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1.0}}},
            ),
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.fine_tuning.jobs.create(**kwargs)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-unknown")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-unknown")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, txt)
    assert e.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as e:
        with open(date_data["train"], "rb") as fh:
            client.files.create(file=("t.jsonl", fh), purpose="assistants")
    assert e.value.body["param"] == "purpose"
    assert client.files.retrieve(f.id).id == f.id  # still serving


MALFORMED = {
    "broken JSON": (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 11
        + '{"messages": [\n',
        "line 12",
        "supervised",
    ),
    "tool message without a call": (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", '
        '"content": "42"}, {"role": "assistant", "content": "yo"}]}\n',
        "line 1",
        "supervised",
    ),
    "weight not 0/1": (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 2}]}\n',
        "line 1",
        "supervised",
    ),
    "DPO without non_preferred_output": (
        '{"input": {"messages": [{"role": "user", "content": "hi"}]}, '
        '"preferred_output": [{"role": "assistant", "content": "yo"}]}\n',
        "line 1",
        "dpo",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_fails_the_job_naming_the_line(client, service, tmp_path, case):
    text, where, kind = MALFORMED[case]
    good = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        if kind == "supervised"
        else '{"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", '
        '"content": "yo"}], "non_preferred_output": [{"role": "assistant", "content": "no"}]}\n'
    )
    path = tmp_path / "bad.jsonl"
    path.write_text(text + good * 12 if where == "line 1" else text)
    f = upload(client, path)
    job = client.fine_tuning.jobs.create(model=service["base"], training_file=f.id, method={"type": kind})
    done = wait_for(client, job.id, timeout=60)
    assert done.status == "failed" and done.error.param == "training_file"
    assert f"bad.jsonl ({f.id}) {where}:" in done.error.message, done.error.message
    assert not (service["home"] / "runs" / job.id).exists()  # nothing trained


def test_a_server_killed_mid_job_resumes_it_to_the_same_weights(tmp_path, tiny_model_dir, date_data):
    """kill -9 the server while a job trains; the next start finishes the job, and its adapter
    equals that of the same job run without interruption (CPU, fp32)."""
    from safetensors.torch import load_file

    home = tmp_path / "home"
    hp = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 16, "batch_size": 8}}}  # 192 steps
    url, proc = start_service(home, tiny_model_dir)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    f = upload(client, date_data["train"])
    killed = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=5, method=hp)
    wait_for_step(client, killed.id, 15)  # past the first epoch's checkpoint (step 12)
    proc.kill()
    proc.wait()
    url, proc = start_service(home, tiny_model_dir)
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        done = wait_for(client, killed.id)
        assert done.status == "succeeded", done.error
        events = [e.message for e in client.fine_tuning.jobs.list_events(killed.id, limit=100)]
        assert "The server restarted; the job resumes from its last checkpoint" in events
        whole = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id, seed=5, method=hp)
        assert wait_for(client, whole.id).status == "succeeded"
    finally:
        stop_service(proc)
    a = load_file(home / "runs" / killed.id / "final" / "adapter_model.safetensors")
    b = load_file(home / "runs" / whole.id / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab"}


def test_two_keys_see_nothing_of_each_other(tmp_path, tiny_model_dir, date_data):
    home = tmp_path / "home"
    keys = tmp_path / "keys.txt"
    keys.write_text("# tenants\n" + "".join(f"{k} {name}\n" for name, k in KEYS.items()))
    url, proc = start_service(home, tiny_model_dir, "--api-keys-file", str(keys))
    try:
        alice, bob = (openai.OpenAI(base_url=url, api_key=KEYS[n], max_retries=0, timeout=60) for n in ("alice", "bob"))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong-key-0123456789", max_retries=0).files.list()
        f = upload(alice, date_data["train"])
        job = alice.fine_tuning.jobs.create(
            model=tiny_model_dir.name,
            training_file=f.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 16}}},
        )
        done = wait_for(alice, job.id)
        assert done.status == "succeeded", done.error
        ckpt = list(alice.fine_tuning.jobs.checkpoints.list(job.id))[0].fine_tuned_model_checkpoint
        ask = [{"role": "user", "content": "hi"}]
        assert alice.chat.completions.create(model=done.fine_tuned_model, messages=ask, max_tokens=2).choices

        assert bob.files.list().data == [] and bob.fine_tuning.jobs.list().data == []
        assert {m.id for m in bob.models.list()} == {tiny_model_dir.name}
        refused = [
            lambda: bob.files.retrieve(f.id),
            lambda: bob.files.content(f.id),
            lambda: bob.files.delete(f.id),
            lambda: bob.fine_tuning.jobs.retrieve(job.id),
            lambda: bob.fine_tuning.jobs.cancel(job.id),
            lambda: bob.fine_tuning.jobs.list_events(job.id),
            lambda: bob.fine_tuning.jobs.checkpoints.list(job.id),
            lambda: bob.models.delete(done.fine_tuned_model),
            lambda: bob.chat.completions.create(model=done.fine_tuned_model, messages=ask, max_tokens=2),
            lambda: bob.chat.completions.create(model=ckpt, messages=ask, max_tokens=2),
            lambda: bob.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=f.id),
        ]
        for call in refused:
            with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as e:
                call()
            assert "alice" not in str(e.value.body)
        assert alice.files.retrieve(f.id).id == f.id  # all still there for their owner
        assert done.fine_tuned_model in {m.id for m in alice.models.list()}
        stored = (home / "service.db").read_bytes()
        assert all(k.encode() not in stored for k in KEYS.values())  # only hashes
    finally:
        stop_service(proc)


def test_with_replay_the_events_count_the_steps_the_run_takes(tmp_path, tiny_model_dir, date_data):
    """--replay 0.25 adds a quarter of every epoch's batches; the events' total_steps is what the
    run takes (its plan.json), not the job's examples over its batch size."""
    url, proc = start_service(tmp_path / "home", tiny_model_dir, "--replay", "0.25")
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        f = upload(client, date_data["train"])
        job = client.fine_tuning.jobs.create(
            model=tiny_model_dir.name,
            training_file=f.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 16}}},
        )
        done = wait_for(client, job.id)
        assert done.status == "succeeded", done.error
        metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
        steps = sorted(m["step"] for m in metrics)
        assert steps == list(range(1, len(steps) + 1))
        assert {m["total_steps"] for m in metrics} == {steps[-1]}
        assert steps[-1] > 96 // 16  # more than the job's own batches: replay's share is counted
    finally:
        stop_service(proc)


def test_dashboard_in_a_real_browser_follows_a_job_and_shows_its_report(client, service, date_data):
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    job = long_job(client, service, date_data, epochs=6)  # 72 steps: still running when the page first draws it
    page_url = service["url"].removesuffix("/v1") + "/"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(page_url)
        page.click(f"tr.job[data-id='{job.id}']")
        page.wait_for_function("Number(document.getElementById('curve').dataset.points) >= 3")
        first = int(page.get_attribute("#curve", "data-points"))
        page.wait_for_function(
            f"Number(document.getElementById('curve').dataset.points) > {first + 3}"
        )  # growing, live
        assert wait_for(client, job.id).status == "succeeded"
        page.wait_for_function("document.getElementById('report').srcdoc.includes('<h2>')", timeout=30_000)
        report = page.frame_locator("#report")
        assert job.id in report.locator("body").inner_text()
        assert report.locator("img").first.get_attribute("src").startswith("data:image/png;base64,")
        page.wait_for_function("document.getElementById('checkpoints').rows.length >= 2")
        assert int(page.get_attribute("#curve", "data-points")) == 72  # every step, once
        assert "succeeded" in page.inner_text(f"tr.job[data-id='{job.id}']")

        page.select_option("#chat-model", service["base"])
        page.fill("#chat-input", "Text: Tom flew to Paris on 3 May 2021. Date:")
        page.click("#chat-form button")
        page.wait_for_selector("#chat-log .reply")
        browser.close()


def test_an_oversized_or_malformed_upload_is_refused_leaving_nothing(tmp_path, tiny_model_dir):
    import urllib.error
    import urllib.request

    home = tmp_path / "home"
    url, proc = start_service(home, tiny_model_dir, "--max-upload-mb", "2")
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        big = tmp_path / "big.jsonl"
        line = '{"messages": [{"role": "user", "content": "' + "x" * 1000 + '"}]}\n'
        big.write_text(line * 2200)  # 2.2 MB: over the 2 MB this server takes
        with pytest.raises(openai.APIStatusError) as e:
            upload(client, big)
        assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
        request = urllib.request.Request(
            url + "/files",
            data=b"not a form",
            method="POST",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(request, timeout=30)
        assert bad.value.code == 400 and "error" in json.loads(bad.value.read())
        assert client.files.list().data == []
        assert [p.name for p in (home / "files").iterdir()] == []  # no blob, no temporary left
        within = tmp_path / "within.jsonl"
        within.write_text(line * 1500)  # 1.5 MB: over the inference API's 1 MiB body limit, within the upload limit
        assert upload(client, within).bytes == within.stat().st_size  # and it keeps serving
    finally:
        stop_service(proc)
