"""--resume continues only the run it was: the same config, not yet finished (kills and exact
resumes: test_faults.py)."""

from helpers import cli_here, write_config


def test_resume_refuses_a_changed_config(tmp_path, tiny_model_dir, date_data):
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 4},
        output={"dir": str(tmp_path / "runs"), "save_every": 2},
    )
    assert cli_here(["train", str(cfg), "--quiet"], tmp_path).returncode == 0
    again = cli_here(["train", str(cfg), "--quiet"], tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    changed = cli_here(["train", str(cfg), "--resume", "--set", "train.lr=0.5"], tmp_path)
    assert changed.returncode == 2 and "changed: train.lr" in changed.stderr
    finished = cli_here(["train", str(cfg), "--resume"], tmp_path)
    assert finished.returncode == 2 and "already finished" in finished.stderr
