"""report_to: what a run logs, read back with each tracker's own reader; a tracker that fails
never stops training."""

import json
import struct
import subprocess
import sys

import pytest
from helpers import cli, read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.run import train

EVAL = {"every": 3, "limit": 4, "max_new_tokens": 8}


def run(tmp_path, tiny_model_dir, date_data, **sections):
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 6, "precision": "fp32", "log_every": 1, "lr": 3e-3},
        eval={**EVAL, "test": str(date_data["test"])},
        **sections,
    )
    return train(load_config(cfg), quiet=True), tmp_path / "runs" / "tiny"


def test_tensorboard_gets_every_metric_and_the_final_scores(tmp_path, tiny_model_dir, date_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary, run_dir = run(tmp_path, tiny_model_dir, date_data, report_to=["tensorboard"])
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    logged = read_jsonl(run_dir / "metrics.jsonl")
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("val/loss")] == [
        (r["step"], r["val_loss"]) for r in logged if "val_loss" in r
    ]
    final = events.Scalars("final/test/scores/exact_match/mean")
    assert [(e.step, e.value) for e in final] == [(6, pytest.approx(summary["test"]["scores"]["exact_match"]["mean"]))]
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]
    assert "plots/loss" in events.Tags()["images"]


def wandb_records(run_dir):
    """The records of W&B's offline transaction log (LevelDB log framing; each record is W&B's
    own protobuf `Record`), as `wandb sync` reads them."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_all_four_trackers_read_back_what_the_run_logged(tmp_path, tiny_model_dir, date_data):
    for package in ("tensorboard", "mlflow", "wandb", "trackio"):
        pytest.importorskip(package)
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 6, "precision": "fp32", "log_every": 1, "lr": 3e-3},
        eval={**EVAL, "test": str(date_data["test"])},
    )
    env = {
        "TRACKIO_DIR": str(tmp_path / "trackio"),
        "WANDB_DIR": str(tmp_path / "wandb-home"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-home"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-home"),
    }
    done = cli(["train", str(cfg), "--quiet", "--report-to", "tensorboard,mlflow,wandb,trackio"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # no tracker's banner on stdout
    assert "report_to" not in done.stderr, done.stderr[-3000:]  # no tracker warned
    run_dir = tmp_path / "runs" / "tiny"
    logged = read_jsonl(run_dir / "metrics.jsonl")
    losses = [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    exact = pytest.approx(summary["test"]["scores"]["exact_match"]["mean"])

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == losses

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (ml_run,) = client.search_runs([client.get_experiment_by_name("tunesmith").experiment_id])
    assert ml_run.info.status == "FINISHED" and ml_run.data.params["train.lr"] == "0.003"
    assert [(m.step, m.value) for m in client.get_metric_history(ml_run.info.run_id, "train/loss")] == losses
    assert ml_run.data.metrics["final/test/scores/exact_match/mean"] == exact
    artifacts = {a.path for a in client.list_artifacts(ml_run.info.run_id)} | {
        a.path for a in client.list_artifacts(ml_run.info.run_id, "plots")
    }
    assert {"config.yaml", "summary.json", "report.md", "report.html", "plots/loss.png"} <= artifacts

    records = wandb_records(run_dir)
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(h["_step"], h["train/loss"]) for h in history] == losses
    summaries = {
        item.key or "/".join(item.nested_key): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    }
    assert summaries["final/test/scores/exact_match/mean"] == exact
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "run"
        for item in r.run.config.update
    }
    assert config["train"]["lr"] == 0.003
    assert any(r.WhichOneof("record_type") == "artifact" and r.artifact.type == "run-results" for r in records)

    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps({'logs': S.get_logs('tunesmith', 'tiny'), "
            "'config': S.get_run_config('tunesmith', 'tiny')}, default=str))",
        ],
        capture_output=True,
        text=True,
        env=done_env(env),
        check=True,
    )
    trackio = json.loads(read.stdout)
    assert [(r["step"], r["train/loss"]) for r in trackio["logs"] if "train/loss" in r] == losses
    assert [
        r["final/test/scores/exact_match/mean"] for r in trackio["logs"] if "final/test/scores/exact_match/mean" in r
    ] == [exact]
    assert trackio["config"]["train"]["lr"] == 0.003


def done_env(extra):
    import os

    return {**os.environ, **extra}


@pytest.fixture(autouse=True)
def local_trackers(monkeypatch):
    """Each tracker at its local default, whatever the machine's environment says."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT", "TRACKIO_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def test_a_tracker_that_cannot_start_warns_once_and_training_goes_on(
    tmp_path, tiny_model_dir, date_data, monkeypatch, capsys
):
    for module in ("torch.utils.tensorboard", "mlflow", "mlflow.tracking", "mlflow.entities", "wandb", "trackio"):
        monkeypatch.setitem(sys.modules, module, None)  # as if none of the four were installed
    from rich.console import Console

    from tunesmith.config import load_config as load
    from tunesmith.run import train as run_training

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 3, "precision": "fp32"},
        report_to=["tensorboard", "mlflow", "wandb", "trackio"],
    )
    summary = run_training(load(cfg), console=Console(stderr=True, soft_wrap=True, width=300), quiet=True)
    assert summary["steps"] == 3 and not (tmp_path / "runs" / "tiny" / "tensorboard").exists()
    err = capsys.readouterr().err
    for name in ("tensorboard", "mlflow", "wandb", "trackio"):
        warnings = [line for line in err.splitlines() if f"report_to {name}:" in line]
        assert len(warnings) == 1 and "training goes on without it" in warnings[0], err[-2000:]


def test_an_unreachable_tracking_server_warns_and_training_goes_on(
    tmp_path, tiny_model_dir, date_data, monkeypatch, capsys
):
    pytest.importorskip("mlflow")
    import socket

    from rich.console import Console

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 3, "precision": "fp32"},
        report_to=["mlflow"],
    )
    summary = train(load_config(cfg), console=Console(stderr=True, soft_wrap=True, width=300), quiet=True)
    assert summary["steps"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "report_to mlflow:" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0]


def test_report_to_names_are_checked(tmp_path, tiny_model_dir, date_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs")
    done = cli(["train", str(cfg), "--report-to", "tensorboard,comet"], tmp_path)
    assert done.returncode != 0 and "report_to" in done.stderr and "comet" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_logs_each_step_once_to_tensorboard(tmp_path, tiny_model_dir, date_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(
        write_config(
            tmp_path / "c.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / "runs",
            train={"max_steps": 6, "precision": "fp32", "log_every": 1},
            output={"save_every": 3, "keep": 1},
            report_to=["tensorboard"],
        )
    )

    def interrupt(step, record):
        if step == 5:
            raise KeyboardInterrupt  # after step 5 was logged; the checkpoint is step 3's

    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True, on_record=interrupt)
    train(cfg, resume=True, quiet=True)
    run_dir = tmp_path / "runs" / "tiny"
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == logged  # steps 4 and 5 once, as re-run
