"""Bad input: one line naming the cause, exit code 2, no traceback, no half-written run directory."""

import json

import pytest
from helpers import cli, cli_here, read_jsonl, write_config


def one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def cfg(tmp_path, tiny_model_dir, date_data):
    return write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", train={"max_steps": 2})


def test_missing_config_file(tmp_path):
    one_line_error(cli_here(["train", "nope.yaml"], tmp_path), "nope.yaml: config file not found")


def test_unknown_config_key(tmp_path, cfg):
    one_line_error(
        cli_here(["train", str(cfg), "--set", "train.epoch=2"], tmp_path), "unknown key 'train.epoch'", "epochs"
    )
    assert not (tmp_path / "runs").exists()


def test_broken_data_line_names_file_and_line(tmp_path, cfg, date_data):
    bad = tmp_path / "bad.jsonl"
    lines = date_data["train"].read_text().splitlines()
    lines[4] = lines[4][:-3]
    bad.write_text("\n".join(lines) + "\n")
    one_line_error(cli_here(["train", str(cfg), "--set", f"data.train={bad}"], tmp_path), f"{bad}:5: invalid JSON")
    assert not (tmp_path / "runs").exists()


def test_missing_data_file(tmp_path, cfg):
    one_line_error(
        cli_here(["train", str(cfg), "--set", "data.val=absent.jsonl"], tmp_path), "absent.jsonl: data file not found"
    )
    assert not (tmp_path / "runs").exists()


def test_model_not_found_offline(tmp_path, cfg):
    result = cli_here(["train", str(cfg), "--set", "model=some-org/some-model-not-cached"], tmp_path, timeout=120)
    one_line_error(result, "some-org/some-model-not-cached", "not in the local Hugging Face cache")
    assert not (tmp_path / "runs").exists()
    one_line_error(cli_here(["generate", "./no/such/dir", "--prompt", "hi"], tmp_path), "model path not found")
    one_line_error(cli_here(["generate", "missing.gguf", "--prompt", "hi"], tmp_path), "GGUF file not found")


def test_hub_lookup_without_offline_flag_fails_fast(tmp_path, cfg, monkeypatch):
    """With the network unreachable and no HF_HUB_OFFLINE, the error still comes, quickly."""
    import subprocess
    import sys
    import time

    from helpers import cli_env

    env = cli_env(tmp_path)
    env.pop("HF_HUB_OFFLINE")
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    t0 = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "generate", "some-org/not-cached", "--prompt", "hi"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    one_line_error(result, "could not be downloaded")
    assert time.time() - t0 < 100


def test_usage_errors_exit_2(tmp_path):
    assert cli_here(["train"], tmp_path).returncode == 2
    assert cli_here(["no-such-command"], tmp_path).returncode == 2


def test_generate_and_eval_on_a_run(tmp_path, cfg, date_data):
    assert cli_here(["train", str(cfg), "--quiet"], tmp_path).returncode == 0
    run = tmp_path / "runs" / "tiny"
    gen = cli_here(
        ["generate", str(run), "--prompt", "hello", "--max-new-tokens", "5", "--precision", "fp32"], tmp_path
    )
    assert gen.returncode == 0, gen.stderr
    sampled = cli_here(
        ["generate", str(run), "--prompt", "hello", "--max-new-tokens", "5", "--temperature", "0.8", "--seed", "1"],
        tmp_path,
    )
    assert sampled.returncode == 0, sampled.stderr
    out = tmp_path / "scores.json"
    ev = cli_here(
        [
            "eval",
            str(run),
            "--data",
            str(date_data["test"]),
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
            "--json",
            str(out),
        ],
        tmp_path,
    )
    assert ev.returncode == 0, ev.stderr
    scores = json.loads(out.read_text())
    assert scores["n"] == 4 and set(scores["scores"]) >= {"exact_match", "normalized_exact_match", "token_f1"}
    assert scores["prompt_tokens"] > 0 and scores["latency_s"] > 0
    predictions = read_jsonl(tmp_path / "scores-shots-0.predictions.jsonl")
    assert len(predictions) == 4
    # the same examples with the first two references replaced by the model's own greedy answers
    # (and the other two still unanswered): exact match is 2 of 4, exactly
    assert all(p["prediction"].strip() and p["prediction"].strip() != p["reference"] for p in predictions), predictions
    rows = [json.loads(line) for line in date_data["test"].read_text().splitlines()[:4]]
    for row, p in zip(rows[:2], predictions[:2]):
        row["messages"][-1]["content"] = p["prediction"]
    (tmp_path / "answered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = cli_here(["eval", str(run), "--data", "answered.jsonl", "--max-new-tokens", "4", "--json", str(out)], tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(out.read_text())["scores"]["exact_match"]["mean"] == 0.5

    # k-shot from the run's own training data, and a user metric given as module:function
    (tmp_path / "mymetric.py").write_text("def has_dash(p, r):\n    return '-' in p\n")
    ev = cli_here(
        [
            "eval",
            str(run),
            "--data",
            str(date_data["test"]),
            "--limit",
            "3",
            "--max-new-tokens",
            "4",
            "--shots",
            "0,2",
            "--metric",
            "mymetric:has_dash",
            "--json",
            str(out),
        ],
        tmp_path,
        env_extra={"PYTHONPATH": str(tmp_path)},
    )
    assert ev.returncode == 0, ev.stderr
    zero, two = json.loads(out.read_text())
    assert (zero["shots"], two["shots"]) == (0, 2) and two["prompt_tokens"] > zero["prompt_tokens"]
    assert "has_dash" in two["scores"]
    bad = cli_here(
        ["eval", str(run), "--data", str(date_data["test"]), "--shots", "2", "--shots-from", "nope.jsonl"], tmp_path
    )
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr


def test_chat_streams_and_keeps_history(tmp_path, tiny_model_dir):
    result = cli_here(
        ["chat", str(tiny_model_dir), "--max-new-tokens", "4", "--temperature", "0"],
        tmp_path,
        input="hello\n/reset\nagain\n/exit\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("assistant> ") == 2
    assert "history cleared" in result.stderr


def test_chat_sends_the_whole_history_until_reset(tiny_model_dir, monkeypatch):
    from tunesmith import chat_session
    from tunesmith.eval.generate import Sampling
    from tunesmith.model.load import load_for_inference

    model, tokenizer = load_for_inference(str(tiny_model_dir))
    prompts, real_prompt_ids = [], chat_session.prompt_ids
    monkeypatch.setattr(
        chat_session,
        "prompt_ids",
        lambda tok, messages, tools=None: (
            prompts.append([(m["role"], m["content"]) for m in messages]) or real_prompt_ids(tok, messages, tools)
        ),
    )
    lines = iter(["hello", "again", "/reset", "third", "/exit"])
    history = chat_session.chat_loop(
        model, tokenizer, Sampling(max_new_tokens=4), system="Be brief.", read=lambda _: next(lines)
    )
    first, second, third = prompts
    assert first == [("system", "Be brief."), ("user", "hello")]
    assert second[:2] == first and second[2][0] == "assistant" and second[3:] == [("user", "again")]
    assert third == [("system", "Be brief."), ("user", "third")]  # /reset kept the system prompt only
    assert [(m["role"], m["content"]) for m in history[:2]] == third and history[2]["role"] == "assistant"


def test_module_entry_point(tmp_path):
    result = cli(["--help"], tmp_path)  # `python -m tunesmith` itself, in a new interpreter
    assert result.returncode == 0 and "quickstart" in result.stdout and "export" in result.stdout


def test_lora_over_a_lora_run_asks_for_a_merge_first(tmp_path, cfg):
    assert cli_here(["train", str(cfg), "--quiet"], tmp_path).returncode == 0
    run = tmp_path / "runs" / "tiny"
    one_line_error(
        cli_here(["train", str(cfg), "--set", f"model={run}", "--set", "name=again"], tmp_path),
        "is a LoRA run; merge it first",
    )
    full = cli_here(
        [
            "train",
            str(cfg),
            "--set",
            f"model={run}",
            "--set",
            "name=full-on-top",
            "--set",
            "adapter.type=none",
            "--quiet",
        ],
        tmp_path,
    )
    assert full.returncode == 0, full.stderr


def test_every_malformed_case_is_one_line_per_problem_with_exit_2(tmp_path, cfg):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b'{"messages": [',  # 2 broken JSON
                b'{"prompt": "\xff", "completion": "x"}',  # 3 invalid UTF-8
                b'{"question": "q"}',  # 4 unknown layout
                json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),  # 5 bad role
                json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),  # 6 non-string content
                json.dumps(
                    {"messages": [{"role": "user", "content": "only a question"}]}
                ).encode(),  # 7 no assistant turn
            ]
        )
        + b"\n"
    )
    result = cli_here(["train", str(cfg), "--set", f"data.train={bad}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == [f"{bad}:{n}" for n in range(2, 8)]
    for line, what in zip(
        lines,
        [
            "invalid JSON",
            "invalid UTF-8",
            "unknown layout",
            "role 'robot' not allowed",
            "content must be a string",
            "no assistant turn",
        ],
    ):
        assert line.startswith("error: ") and what in line
    (tmp_path / "empty.jsonl").write_text("\n")
    one_line_error(
        cli_here(["train", str(cfg), "--set", f"data.train={tmp_path / 'empty.jsonl'}"], tmp_path),
        "empty.jsonl: no records",
    )
    assert not (tmp_path / "runs").exists()
