"""A job's `auto` hyperparameters and the tunesmith run config it becomes (no server)."""

import pytest

from tunesmith.config import validate_config
from tunesmith.service.job_spec import Hyperparameters, JobRequest, resolve, run_config


@pytest.mark.parametrize(
    "n, epochs, batch", [(10, 10, 1), (20, 5, 1), (34, 3, 1), (320, 3, 4), (600, 3, 8), (20_000, 1, 8)]
)
def test_auto_hyperparameters_follow_the_data_size(n, epochs, batch):
    hp = resolve("supervised", Hyperparameters(), n)
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (epochs, batch, 2.0)
    given = resolve("supervised", Hyperparameters(n_epochs=7, batch_size="auto", learning_rate_multiplier=0.5), n)
    assert (given["n_epochs"], given["batch_size"], given["learning_rate_multiplier"]) == (7, batch, 0.5)


def job(kind: str, **hyper) -> dict:
    settings = {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0, **hyper}}
    if kind == "reinforcement":
        settings["grader"] = {
            "type": "string_check",
            "name": "g",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        }
    return {"id": "ftjob-abc", "seed": 7, "method": {"type": kind, kind: settings}}


@pytest.mark.parametrize(
    "kind, method, lr", [("supervised", "sft", 1e-3), ("dpo", "dpo", 1e-4), ("reinforcement", "grpo", 2e-4)]
)
def test_each_method_becomes_a_valid_run_config(kind, method, lr):
    extra = (
        {"beta": 0.2}
        if kind == "dpo"
        else {"compute_multiplier": 2.0, "eval_interval": 5}
        if kind == "reinforcement"
        else {}
    )
    tree = run_config(
        job(kind, **extra),
        "smollm2-135m-instruct",
        "/data/train.jsonl",
        "/data/val.jsonl",
        40,
        "/runs",
        60,
        replay=0.25,
    )
    cfg = validate_config(tree, "job")
    assert (cfg.method, cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (method, 2, 4, 7)
    assert cfg.train.lr == pytest.approx(lr)
    assert cfg.output.save_every == 10 and cfg.eval.every == (5 if kind == "reinforcement" else 10)  # each epoch's end
    assert cfg.forgetting.replay == 0.25 and cfg.forgetting.probe_limit == 60
    if kind == "dpo":
        assert cfg.preference.beta == 0.2
    if kind == "reinforcement":
        assert cfg.rl.group_size == 8 and cfg.rl.rewards[0].grader.operation == "eq"


def test_a_request_is_checked_as_openai_checks_it():
    with pytest.raises(ValueError, match="integrations"):
        JobRequest(model="m", training_file="f", integrations=[{"type": "wandb"}])
    with pytest.raises(ValueError, match="at most 16 keys"):
        JobRequest(model="m", training_file="f", metadata={str(i): "x" for i in range(17)})
    with pytest.raises(ValueError, match="suffix"):
        JobRequest(model="m", training_file="f", suffix="no spaces allowed")
    assert JobRequest(model="m", training_file="f", method={"type": "dpo"}).given() == Hyperparameters()


@pytest.mark.parametrize(
    "args, keys, message",
    [
        (["--host", "0.0.0.0"], None, "--host 0.0.0.0: listening beyond this machine needs --api-keys-file"),
        ([], "short-key alice\n", "keys.txt:1: a key needs at least 16 characters"),
        ([], "a-long-enough-key-1 alice\na-long-enough-key-1 bob\n", "keys.txt:2: this key is listed twice"),
        ([], "# nobody\n", "no keys in it"),
        (["--model", "no/such/model"], None, "no/such/model"),
        (
            ["--model", "no name=smollm2-135m-instruct"],
            None,
            "--model no name=smollm2-135m-instruct: expected REFERENCE or ID=REFERENCE",
        ),
    ],
)
def test_service_refuses_bad_settings_in_one_line(tmp_path, args, keys, message):
    from helpers import cli_here

    extra = []
    if keys is not None:
        (tmp_path / "keys.txt").write_text(keys)
        extra = ["--api-keys-file", str(tmp_path / "keys.txt")]
    result = cli_here(["service", "--home", str(tmp_path / "home"), *args, *extra], tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_a_job_that_finished_while_no_server_watched_is_succeeded_not_rerun(tmp_path):
    """The server died after the worker wrote its summary and report: the next start records the
    job as succeeded (a resume would refuse a finished run)."""
    import json

    from tunesmith.service.files import FileStore
    from tunesmith.service.scheduler import Scheduler
    from tunesmith.service.store import Store

    store = Store(tmp_path / "service.db")
    job = {
        "object": "fine_tuning.job",
        "id": "ftjob-x1234567",
        "model": "base",
        "status": "running",
        "seed": 1,
        "user_provided_suffix": "s",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}},
        },
    }
    store.add_job("local", job, {"model": "base", "training_file": "file-1"})
    scheduler = Scheduler(store, FileStore(tmp_path / "files", store, 1 << 20), tmp_path, {"base": "base"})
    run = scheduler.run_dir(job["id"])
    (run / "final").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2)))
    (run / "summary.json").write_text(json.dumps({"steps": 2, "tokens": 50}))
    scheduler._recover()
    assert store.job(job["id"])["status"] == "queued"  # no report yet: not finished, so it resumes
    store.update_job(job["id"], status="running")
    (run / "report.html").write_text("<html></html>")
    scheduler._recover()
    done = store.job(job["id"])
    assert (
        done["status"] == "succeeded"
        and done["fine_tuned_model"] == "ft:base:s:x1234567"
        and done["trained_tokens"] == 50
    )
    assert [c["step_number"] for c in store.checkpoints(job["id"])] == [2]
