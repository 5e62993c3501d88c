"""Nothing lost under faults: kill -9 at 20 points of a run (between steps, in the middle of
checkpoint and log writes), SIGTERM, NaN losses, a full disk. Every kill leaves only complete
checkpoints, `--resume` always continues, and the finished run's loss curve and weights equal an
uninterrupted run's exactly (fp32 on a CPU)."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli_env, read_jsonl, train_until, write_config
from safetensors.torch import load_file

from tunesmith.engine.logbook import read_metrics  # what --resume reads: a torn last line dropped

STEPS = 90
SAVE_EVERY = 3
RUNNER = Path(__file__).with_name("fault_runner.py")


def fault_config(tmp: Path, model: Path, data: dict, name: str) -> Path:
    return write_config(
        tmp / f"{name}.yaml",
        model,
        data,
        tmp / "runs",
        name=name,
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},  # dropout: RNG state matters
        train={
            "max_steps": STEPS,
            "batch_size": 4,
            "lr": 3e-3,
            "precision": "fp32",
            "log_every": 1,
            "seed": 5,
            "warmup": 0,
        },
        output={"dir": str(tmp / "runs"), "save_every": SAVE_EVERY, "keep": 2},
    )


class Runner:
    """tests/fault_runner.py: forks a run per command, applies the fault, reports how it ended."""

    def __init__(self, tmp: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp,
            env=cli_env(tmp),
        )

    def run(self, config: Path, resume: bool, fault: dict | None = None) -> str:
        self.proc.stdin.write(json.dumps({"config": str(config), "resume": resume, "fault": fault}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"fault runner died: {self.proc.stderr.read()[-2000:]}"
        return json.loads(line)["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def plan(seed: int = 11) -> list[dict]:
    """20 faults at seeded random points: 19 while training (each lets the run advance at most 4
    of its 90 steps), then one after training, while it evaluates and reports."""
    rng = random.Random(seed)
    faults = [{"kind": "step", "at": rng.randint(1, 4)} for _ in range(8)]
    faults += [
        {"kind": "save", "at": 1, "phase": phase}
        for phase in ("file0", "file1", "before_rename", "after_rename", "file0", "file1", "after_rename")
    ]
    faults += [{"kind": "log", "at": rng.randint(1, 4)} for _ in range(2)]
    faults += [{"kind": "sigterm", "at": rng.randint(1, 4)}, {"kind": "sigint", "at": rng.randint(1, 4)}]
    rng.shuffle(faults)
    return faults + [{"kind": "report", "at": 1}]


def complete_checkpoints(run: Path) -> list[int]:
    """Every visible checkpoint loads whole; returns their steps."""
    steps = []
    for folder in sorted((run / "checkpoints").glob("step-*")):
        for name in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors"):
            load_file(folder / name)  # a torn file raises here
        state = json.loads((folder / "state.json").read_text())
        assert state["state"]["step"] == int(folder.name.split("-")[1])
        steps.append(state["state"]["step"])
    return steps


def test_kill9_at_20_points_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_model_dir, date_data):
    killed, whole = (fault_config(tmp_path, tiny_model_dir, date_data, n) for n in ("killed", "whole"))
    runner = Runner(tmp_path)
    try:
        run = tmp_path / "runs" / "killed"
        *training, reporting = plan()
        for i, fault in enumerate(training):
            status = runner.run(killed, resume=i > 0, fault=fault)
            expected = "exit 0" if fault["kind"] in ("sigterm", "sigint") else "killed 9"
            assert status == expected, (i, fault, status)
            steps = complete_checkpoints(run)
            assert not (run / "final").exists() and (run / "config.yaml").is_file()
            if fault["kind"] in ("sigterm", "sigint"):  # stopped cleanly: a checkpoint at the step it stopped after
                assert steps and steps[-1] == read_metrics(run / "metrics.jsonl")[-1]["step"]
        assert 0 < max(complete_checkpoints(run), default=0) < STEPS
        assert runner.run(killed, resume=True, fault=reporting) == "killed 9"
        assert (run / "final").is_dir() and not (run / "report.html").exists()
        assert runner.run(killed, resume=True) == "exit 0"  # trains its last steps again, then reports
        assert (run / "report.html").is_file()
        assert runner.run(whole, resume=False) == "exit 0"
    finally:
        runner.close()
    a, b = read_jsonl(run / "metrics.jsonl"), read_jsonl(tmp_path / "runs" / "whole" / "metrics.jsonl")
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))  # no step lost or logged twice
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # exactly, not approximately
    final_a = load_file(run / "final" / "adapter_model.safetensors")
    final_b = load_file(tmp_path / "runs" / "whole" / "final" / "adapter_model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_b)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # leftovers of killed writes cleaned up


def test_sigterm_writes_a_checkpoint_and_exits_0(tmp_path, tiny_model_dir, date_data):
    """The command a scheduler stops (resuming after SIGTERM is part of the 20-fault test)."""
    import os
    import signal

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 100000, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "log_every": 1},
    )
    log = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    proc = train_until(cfg, log, tmp_path, 3, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    [message] = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    step = int(message.split("stopped after step ")[1].split()[0])
    assert step >= 3 and f"step-{step}" in message and "--resume" in message
    assert complete_checkpoints(tmp_path / "runs" / "tiny") == [step]
    assert [r["step"] for r in read_jsonl(log)][-1] == step and not (tmp_path / "runs" / "tiny" / "final").exists()


def small_run(tmp: Path, model: Path, data: dict, name: str, **train) -> Path:
    return write_config(
        tmp / f"{name}.yaml",
        model,
        data,
        tmp / "runs",
        name=name,
        adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        train={"max_steps": 12, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "log_every": 1, "warmup": 0, **train},
        output={"dir": str(tmp / "runs"), "save_every": 2, "keep": 2},
    )


def test_nan_steps_are_skipped_and_too_many_stop_the_run_keeping_its_checkpoints(
    tmp_path, tiny_model_dir, date_data, monkeypatch, capsys
):
    from tunesmith.cli import main
    from tunesmith.methods.sft import SFT

    loss, calls = SFT.loss, {"n": 0}
    poisoned = {3, 5}

    def sometimes_nan(self, model, batch):
        calls["n"] += 1
        total, metrics = loss(self, model, batch)
        return (total * float("nan") if calls["n"] in poisoned else total), metrics

    monkeypatch.setattr(SFT, "loss", sometimes_nan)
    with pytest.raises(SystemExit) as done:
        main(["train", str(small_run(tmp_path, tiny_model_dir, date_data, "some")), "--quiet"])
    assert done.value.code == 0
    records = read_metrics(tmp_path / "runs" / "some" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13)) and records[-1]["skipped_steps"] == 2
    assert [r["step"] for r in records if r["loss"] != r["loss"]] == [3, 5]  # those steps' own lines say nan
    weights = load_file(tmp_path / "runs" / "some" / "final" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())

    calls["n"], poisoned = 0, set(range(7, 100))  # from step 7 on, every loss is nan: diverged
    poisoned_all = poisoned

    def nan_from_7(self, model, batch):
        calls["n"] += 1
        total, metrics = loss(self, model, batch)
        return (total * float("nan") if calls["n"] in poisoned_all else total), metrics

    monkeypatch.setattr(SFT, "loss", nan_from_7)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["train", str(small_run(tmp_path, tiny_model_dir, date_data, "diverged", max_skipped_steps=2)), "--quiet"])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "training diverged: 3 steps" in err and "max_skipped_steps: 2" in err
    run = tmp_path / "runs" / "diverged"
    assert "last good checkpoint" in err and "step-8" in err
    assert complete_checkpoints(run) == [6, 8] and not (run / "final").exists()
    at_6, at_8 = (load_file(run / "checkpoints" / f"step-{s}" / "trainable.safetensors") for s in (6, 8))
    assert all(torch.isfinite(w).all() for w in at_8.values())
    assert all(torch.equal(at_6[k], at_8[k]) for k in at_6)  # the skipped steps 7 and 8 changed no weight


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path, tiny_model_dir, date_data, monkeypatch, capsys
):
    import errno

    from tunesmith.cli import main
    from tunesmith.engine import checkpoint

    save_file, calls = checkpoint.save_file, {"n": 0}

    def disk_fills_up(tensors, path):
        calls["n"] += 1
        if calls["n"] == 4:  # the second checkpoint's first file: part of it lands, then the disk is full
            Path(path).write_bytes(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        save_file(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_up)
    cfg = small_run(tmp_path, tiny_model_dir, date_data, "full")
    with pytest.raises(SystemExit) as done:
        main(["train", str(cfg), "--quiet"])
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "full"
    assert done.value.code == 1
    assert "step-4: checkpoint could not be written (No space left on device)" in err
    assert f"the previous checkpoint {run / 'checkpoints' / 'step-2'} is intact" in err
    assert complete_checkpoints(run) == [2] and not list((run / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(checkpoint, "save_file", save_file)  # space again: the run continues from step 2
    with pytest.raises(SystemExit) as done:
        main(["train", str(cfg), "--resume", "--quiet"])
    assert done.value.code == 0 and (run / "final").is_dir()
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 13))


def test_the_same_config_and_seed_give_the_same_loss_curve(tmp_path, tiny_model_dir, date_data):
    from tunesmith.config import load_config
    from tunesmith.run import train

    curves = []
    for name, seed in (("one", 3), ("two", 3), ("other-seed", 4)):
        train(load_config(small_run(tmp_path, tiny_model_dir, date_data, name, seed=seed), []), quiet=True)
        curves.append([r["loss"] for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")])
    assert curves[0] == curves[1]  # bit for bit
    assert curves[0] != curves[2]


def test_gpu_rng_states_come_back_in_device_order():
    """Saved as cuda.0 ... cuda.N: restored by device number (as text cuda.10 sorts before cuda.2,
    which gave device 2 device 10's stream on 11 or more GPUs)."""
    from tunesmith.engine.checkpoint import cuda_rng_states

    saved = {f"cuda.{i}": torch.tensor([i]) for i in (3, 11, 0, 10, 2, 1)} | {"torch": torch.tensor([-1])}
    assert [int(t) for t in cuda_rng_states(saved)] == [0, 1, 2, 3, 10, 11]
