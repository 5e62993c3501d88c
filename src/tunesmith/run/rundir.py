"""The run directory: whether a run starts, resumes or is refused, and its final model written whole.

A run directory is created only after every input is checked; `--resume` continues one only
with the same config; `final/` appears by one rename, never half-written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from tunesmith import atomic
from tunesmith.config import RunConfig, validate_config
from tunesmith.errors import UserError
from tunesmith.model.load import quiet_transformers


def never_started(run_dir: Path) -> bool:
    """No run directory, or one a run killed before its config was written left behind."""
    return not run_dir.exists() or all(atomic.is_temp_of(p, "config.yaml") for p in run_dir.iterdir())


def check_run_dir(cfg: RunConfig, resume: bool) -> bool:
    """Whether the run continues from its run directory (else it starts from the beginning)."""
    run_dir = cfg.run_dir()
    if never_started(run_dir):
        return False  # also under --resume: the same command restarts a preempted job, even one killed this early
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{run_dir}: nothing to resume (no config.yaml in the run directory)")
        before = validate_config(yaml.safe_load(saved.read_text()), str(saved)).model_dump(mode="json")
        now = cfg.model_dump(mode="json")
        changed = sorted(diff_keys(before, now))
        if changed:
            raise UserError(f"{saved}: --resume needs the same config; changed: {', '.join(changed)}")
        if (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file():
            raise UserError(f"{run_dir}: run already finished (its report is written); nothing to resume")
        # final/ but no report: stopped while evaluating; the steps after the last checkpoint are
        # trained again (the same weights: resuming is exact), then the measurements and the report
        return True
    raise UserError(
        f"{run_dir}: run directory already exists; continue it with --resume or choose another name (--set name=...)"
    )


def diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def save_final(model, tokenizer, run_dir: Path, base_path: Path, quantization: dict | None = None) -> Path:
    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "peft_config"):
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = str(base_path)
    with quiet_transformers():
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if quantization is not None:  # what the adapter was trained on top of
        from tunesmith.model.quantize import write_settings

        write_settings(tmp, quantization)
    if final.exists():  # resumed after its evaluation was interrupted: the same weights again
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final
