"""The training path on a CUDA GPU, held to the CPU's: run only where torch sees a GPU (skipped
elsewhere, saying so). The same tiny-model runs go through the CLI twice, once with the GPU
hidden (CUDA_VISIBLE_DEVICES empty: the CPU path) and once on it; fp32 losses agree step by step,
bf16 autocast (what `precision: auto` picks on a GPU with bf16) trains the loss down from the same start,
and a run killed and resumed on the GPU ends where the uninterrupted one does (its RNG states
restored on the device)."""

from __future__ import annotations

import pytest
import torch
from helpers import cli, read_jsonl, train_until, write_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available())")

CPU = {"CUDA_VISIBLE_DEVICES": ""}


def run(tmp_path, name: str, model, data, env: dict | None = None, dropout: float = 0.0, **train) -> list[dict]:
    config = write_config(
        tmp_path / f"{name}.yaml",
        model,
        data,
        tmp_path / name,
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": dropout},
        train={"max_steps": 12, "lr": 1e-2, "log_every": 1, **train},
        eval={"every": 12},
        output={"save_every": 4},
    )
    done = cli(["train", str(config)], tmp_path, env)
    assert done.returncode == 0, done.stderr[-2000:]
    return read_jsonl(tmp_path / name / "tiny" / "metrics.jsonl")


def test_fp32_losses_on_the_gpu_equal_the_cpus(tmp_path, tiny_model_dir, date_data):
    on_cpu = run(tmp_path, "cpu", tiny_model_dir, date_data, CPU, precision="fp32")
    on_gpu = run(tmp_path, "gpu", tiny_model_dir, date_data, precision="fp32")
    assert [r["step"] for r in on_gpu] == [r["step"] for r in on_cpu] == list(range(1, 13))
    for a, b in zip(on_cpu, on_gpu):  # TF32 is off for matmuls by default: fp32 on both
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), (a["step"], a["loss"], b["loss"])


def test_bf16_autocast_on_the_gpu_trains_from_the_fp32_start(tmp_path, tiny_model_dir, date_data):
    fp32 = run(tmp_path, "fp32", tiny_model_dir, date_data, precision="fp32")
    bf16 = run(tmp_path, "bf16", tiny_model_dir, date_data, precision="bf16")
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=2e-2)  # bf16's rounding at the same weights
    assert bf16[-1]["loss"] < 0.8 * bf16[0]["loss"], [r["loss"] for r in bf16]


def test_a_run_killed_and_resumed_on_the_gpu_ends_where_the_uninterrupted_one_does(tmp_path, tiny_model_dir, date_data):
    import subprocess

    from safetensors.torch import load_file

    from tunesmith.engine.logbook import read_metrics

    # dropout: the RNG's state matters
    whole = run(tmp_path, "whole", tiny_model_dir, date_data, dropout=0.1, precision="fp32", max_steps=40)
    config = write_config(
        tmp_path / "part.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "part",
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
        train={"max_steps": 40, "lr": 1e-2, "log_every": 1, "precision": "fp32"},
        eval={"every": 12},
        output={"save_every": 4},
    )
    log = tmp_path / "part" / "tiny" / "metrics.jsonl"
    proc = train_until(config, log, tmp_path, 10, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.kill()
    proc.wait()
    assert 10 <= len(read_metrics(log)) < 40, "the run ended before it could be killed mid-way"
    done = cli(["train", str(config), "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = read_jsonl(log)
    assert [r["step"] for r in resumed] == list(range(1, 41))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-5)
    a = load_file(tmp_path / "whole" / "tiny" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "tiny" / "final" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
