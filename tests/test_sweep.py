"""tunesmith sweep: Optuna trials as runs, pruning, a killed sweep resumed, the best config."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import cli, cli_env, read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.errors import UserError

SPACE = {"train.lr": {"log_uniform": [1.0e-3, 3.0e-2]}, "adapter.r": {"choice": [4, 8]}, "metric": "val_loss"}


def sweep_config(tmp_path, tiny_model_dir, date_data, max_steps=8, **sweep):
    return write_config(
        tmp_path / "s.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        name="sw",
        train={"max_steps": max_steps, "lr": 3e-3, "precision": "fp32", "log_every": 2},
        eval={"every": 2},
        output={"save_every": 4, "keep": 1},
        sweep={**SPACE, **sweep},
    )


def finished_trials(sweep_dir):
    return sorted(p.parent.name for p in (sweep_dir / "trials").glob("*/report.html"))


def test_a_killed_sweep_resumes_and_runs_no_trial_twice(tmp_path, tiny_model_dir, date_data):
    cfg = sweep_config(tmp_path, tiny_model_dir, date_data, max_steps=24, pruner="none")
    sweep_dir = tmp_path / "runs" / "sw"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "sweep", str(cfg), "--trials", "4", "--quiet"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while len(finished_trials(sweep_dir)) < 2 or not list((sweep_dir / "trials").glob("trial-2/checkpoints/step-*")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "slow"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # mid-way through the third trial, after its first checkpoint
    proc.wait()
    before = {name: (sweep_dir / "trials" / name / "metrics.jsonl").read_text() for name in finished_trials(sweep_dir)}
    assert len(before) == 2

    done = cli(["sweep", str(cfg), "--trials", "4", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial-2 (3 of 4)" in done.stderr and "(resumed)" in done.stderr  # from its checkpoint
    result = json.loads((sweep_dir / "sweep.json").read_text())
    runs = [t["run"] for t in result["trials"]]
    assert len(runs) == 4 and len(set(runs)) == 4 and "trial-2" in runs  # the interrupted trial went on, once
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == sorted(runs)
    for name, text in before.items():  # finished before the kill: not run again
        assert (sweep_dir / "trials" / name / "metrics.jsonl").read_text() == text
    for name in runs:  # every step logged once, the resumed trial's too
        steps = [r["step"] for r in read_jsonl(sweep_dir / "trials" / name / "metrics.jsonl")]
        assert steps == sorted(set(steps))
    assert all(t["state"] == "complete" and t["steps"] == 24 for t in result["trials"])
    assert len({json.dumps(t["params"], sort_keys=True) for t in result["trials"]}) == 4  # no point drawn again

    best = result["best"]
    assert best["value"] == min(t["value"] for t in result["trials"] if t["state"] == "complete")
    best_cfg = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert (
        best_cfg["train"]["lr"] == best["params"]["train.lr"]
        and best_cfg["adapter"]["r"] == best["params"]["adapter.r"]
    )
    again = cli(["train", str(sweep_dir / "best.yaml"), "--quiet"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["val_loss"] == pytest.approx(best["value"], rel=1e-6)  # the best config reproduces
    report = (sweep_dir / "report.md").read_text()
    assert "## Sweep" in report and f"Best: trial {best['trial']}" in report


def test_a_trial_that_falls_behind_is_pruned(tmp_path, tiny_model_dir, date_data):
    import optuna

    from tunesmith.sweep import run_sweep

    cfg = load_config(sweep_config(tmp_path, tiny_model_dir, date_data, pruner="median"))
    sweep_dir = tmp_path / "runs" / "sw"
    sweep_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="sw", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    study.set_user_attr("space", {k: v.model_dump(mode="json", exclude_none=True) for k, v in cfg.sweep.params.items()})
    for lr in (2e-2, 1e-2, 1e-3):  # the third learns far slower than the first two
        study.enqueue_trial({"train.lr": lr, "adapter.r": 8})
    result = run_sweep(cfg, 3, quiet=True)
    states = {t["run"]: t["state"] for t in result["trials"]}
    assert states == {"trial-0": "complete", "trial-1": "complete", "trial-2": "pruned"}
    pruned = read_jsonl(sweep_dir / "trials" / "trial-2" / "metrics.jsonl")
    assert pruned[-1]["step"] < 8 and "val_loss" in pruned[-1]  # stopped at an evaluation, before the end
    assert "importance" in result and set(result["importance"]) <= {"train.lr", "adapter.r"}


def test_a_space_that_makes_a_bad_config_fails_before_any_trial(tmp_path, tiny_model_dir, date_data):
    cfg = load_config(sweep_config(tmp_path, tiny_model_dir, date_data, **{"adapter.r": {"choice": [0, 8]}}))
    from tunesmith.sweep import run_sweep

    with pytest.raises(UserError, match="adapter.r"):
        run_sweep(cfg, 2, quiet=True)
    assert not (tmp_path / "runs" / "sw" / "trials").exists()
    with pytest.raises(Exception, match="log_uniform"):
        load_config(sweep_config(tmp_path, tiny_model_dir, date_data, **{"train.lr": {"log_uniform": [0, 1]}}))
