"""report_to: what a run logs, read back with each tracker's own reader; a tracker that fails
never stops training."""

import sys

import pytest
from conftest import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.run import train


def run(tmp_path, tiny_model_dir, date_data, **sections):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs",
                       train={"max_steps": 6, "precision": "fp32", "log_every": 1, "lr": 3e-3}, eval={"every": 3,
                       "test": str(date_data["test"]), "limit": 4, "max_new_tokens": 8}, **sections)
    return train(load_config(cfg), quiet=True), tmp_path / "runs" / "tiny"


def test_tensorboard_gets_every_metric_and_the_final_scores(tmp_path, tiny_model_dir, date_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary, run_dir = run(tmp_path, tiny_model_dir, date_data, report_to=["tensorboard"])
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    logged = read_jsonl(run_dir / "metrics.jsonl")
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("val/loss")] == \
        [(r["step"], r["val_loss"]) for r in logged if "val_loss" in r]
    final = events.Scalars("final/test/scores/exact_match/mean")
    assert [(e.step, e.value) for e in final] == [(6, pytest.approx(summary["test"]["scores"]["exact_match"]["mean"]))]
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]


def test_a_tracker_that_cannot_start_warns_once_and_training_goes_on(tmp_path, tiny_model_dir, date_data, monkeypatch,
                                                                     capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    from rich.console import Console

    from tunesmith.config import load_config as load
    from tunesmith.run import train as run_training

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs",
                       train={"max_steps": 3, "precision": "fp32"}, report_to=["tensorboard"])
    summary = run_training(load(cfg), console=Console(stderr=True, soft_wrap=True, width=300), quiet=True)
    assert summary["steps"] == 3 and not (tmp_path / "runs" / "tiny" / "tensorboard").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "report_to tensorboard" in line]
    assert len(warnings) == 1 and "training goes on without it" in warnings[0]
