"""tunesmith rebase: the old fine-tune's answers train a new base; the parity report pairs old and
new on the test split and general QA."""

import json
import signal

import pytest
from helpers import cli_env, read_jsonl, start_server, tiny_family, write_config

from tunesmith.config import load_config
from tunesmith.rebase import run_rebase
from tunesmith.run import train


@pytest.fixture(scope="module")
def old_run(tmp_path_factory, tiny_model_dir, date_data):
    tmp = tmp_path_factory.mktemp("old")
    cfg = write_config(
        tmp / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp / "runs",
        name="old",
        train={"max_steps": 8, "lr": 1e-2, "precision": "fp32"},
        eval={
            "test": str(date_data["test"]),
            "limit": 8,
            "max_new_tokens": 8,
            "metric": "digit_metric:digit_share",
            "primary": "digit_share",
        },
        forgetting={"probe": True, "probe_limit": 6},
    )
    train(load_config(cfg), quiet=True)
    return tmp / "runs" / "old"


@pytest.fixture(scope="module")
def new_base(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("qwen2")
    tiny_family("qwen2", tokenizer, folder)
    return folder


def test_rebase_trains_the_new_base_on_the_old_models_answers_and_reports_parity(old_run, new_base, date_data):
    result = run_rebase(str(old_run), str(new_base), name="moved", max_tokens=8, quiet=True)
    new_dir = old_run.parent / "moved"
    replies = read_jsonl(old_run.parent / "moved.replies" / "replies.jsonl")
    assert len(replies) == len(read_jsonl(date_data["train"])) and all(r["teacher"] == str(old_run) for r in replies)
    new_cfg = load_config(new_dir / "config.yaml")
    assert new_cfg.model == str(new_base) and [s.path for s in new_cfg.data.train] == [result["replies"]]
    assert new_cfg.train.max_steps == 8 and new_cfg.adapter.type == "lora"  # the old run's config otherwise
    parity = json.loads((new_dir / "parity.json").read_text())
    old_test = json.loads((old_run / "eval" / "test.json").read_text())["scores"]["digit_share"]["mean"]
    new_test = json.loads((new_dir / "eval" / "test.json").read_text())["scores"]["digit_share"]["mean"]
    assert old_test != new_test  # (so that the next line tells them apart)
    assert parity["task"]["old"]["mean"] == old_test and parity["task"]["new"]["mean"] == new_test
    assert parity["task"]["difference"]["n"] == 8 and parity["general_qa"]["difference"]["n"] == 6
    assert parity["task"]["difference"]["mean"] == pytest.approx(new_test - old_test)
    assert parity["verdict"].startswith(("parity", "not at parity"))
    assert "| task digit_share |" in (new_dir / "parity.md").read_text()


def test_rebase_from_an_endpoint_standing_in_for_a_hosted_fine_tune(tmp_path, old_run, new_base, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    line, proc = start_server(
        ["serve", str(old_run), "--port", "0", "--precision", "fp32"], tmp_path, cli_env(tmp_path)
    )
    try:
        url = line.split(" at ")[1].split()[0]
        run_rebase(
            url,
            str(new_base),
            old_model="old",
            config=old_run / "config.yaml",
            name="from-endpoint",
            max_tokens=8,
            quiet=True,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    new_dir = old_run.parent / "from-endpoint"
    parity = json.loads((new_dir / "parity.json").read_text())
    # the served old model is the old run: asked the test split, it scores what the run scored
    old_test = json.loads((old_run / "eval" / "test.json").read_text())["scores"]["digit_share"]["mean"]
    assert parity["task"]["old"]["mean"] == pytest.approx(old_test) and "general_qa" not in parity
    replies = read_jsonl(old_run.parent / "from-endpoint.replies" / "replies.jsonl")
    assert len(replies) == 96 and {r["teacher"] for r in replies} == {f"old at {url}"}
