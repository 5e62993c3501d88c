"""A run killed with SIGKILL after a checkpoint and resumed ends exactly where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

from conftest import cli, cli_env, read_jsonl, write_config

STEPS = 300


def test_kill9_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir, date_data):
    common = dict(adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.1},  # dropout: RNG state matters
                  train={"max_steps": STEPS, "lr": 3e-3, "precision": "fp32", "log_every": 1, "seed": 3},
                  eval={"every": 50})
    killed_cfg = write_config(tmp_path / "killed.yaml", tiny_model_dir, date_data, tmp_path / "runs", name="killed",
                              output={"dir": str(tmp_path / "runs"), "save_every": 10, "keep": 2}, **common)
    whole_cfg = write_config(tmp_path / "whole.yaml", tiny_model_dir, date_data, tmp_path / "runs", name="whole", **common)

    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "train", str(killed_cfg), "--quiet"],
                            env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / "runs" / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "step-30").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {proc.stderr.read()[-500:]}"
    run = tmp_path / "runs" / "killed"
    assert not (run / "final").exists()
    logged_before = read_jsonl(run / "metrics.jsonl")[-1]["step"]
    assert 30 <= logged_before < STEPS

    resumed = cli(["train", str(killed_cfg), "--resume", "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    whole = cli(["train", str(whole_cfg), "--quiet"], tmp_path)
    assert whole.returncode == 0, whole.stderr

    a = read_jsonl(run / "metrics.jsonl")
    b = read_jsonl(tmp_path / "runs" / "whole" / "metrics.jsonl")
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))  # no step lost or logged twice
    assert a[-1]["loss"] == b[-1]["loss"]  # bit-identical in fp32
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[-1]["val_loss"] == b[-1]["val_loss"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(kept) == 2 and not any(name.startswith(".tmp") for name in kept)


def test_resume_refuses_a_changed_config(tmp_path, tiny_model_dir, date_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs",
                       train={"max_steps": 4}, output={"dir": str(tmp_path / "runs"), "save_every": 2})
    assert cli(["train", str(cfg), "--quiet"], tmp_path).returncode == 0
    again = cli(["train", str(cfg), "--quiet"], tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    changed = cli(["train", str(cfg), "--resume", "--set", "train.lr=0.5"], tmp_path)
    assert changed.returncode == 2 and "changed: train.lr" in changed.stderr
    finished = cli(["train", str(cfg), "--resume"], tmp_path)
    assert finished.returncode == 2 and "already finished" in finished.stderr
