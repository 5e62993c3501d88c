"""New models made from trained weights without training: a run moved α of the way from its base
(`tunesmith merge RUN --alpha A`, forgetting/interpolation.py), written in the layout the run's
own final model has (a PEFT adapter folder, or a Hugging Face model folder), with a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from tunesmith import atomic
from tunesmith.errors import UserError
from tunesmith.export.model_card import model_card
from tunesmith.forgetting.interpolation import Interpolation, scale_adapter_weights
from tunesmith.model.load import load_base, load_tokenizer, quiet_transformers, tokenizer_dir
from tunesmith.model.quantize import SETTINGS_FILE
from tunesmith.model.resolve import is_run_dir, resolve


def _empty_target(to: Path) -> Path:
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to}: target exists and is not empty")
    return to


def write_interpolated(run: str, alpha: float, to: Path) -> dict:
    """θ₀ + α(θ − θ₀) of a run: its adapter scaled (LoRA, IA3) or its full weights interpolated."""
    if not 0 <= alpha <= 1:
        raise UserError(f"--alpha {alpha}: α lies in [0, 1] (0 = the base model, 1 = the tuned one)")
    run_dir = Path(run)
    if not (run_dir.is_dir() and is_run_dir(run_dir)):
        raise UserError(f"{run}: interpolation needs a run directory (its config names the base model)")
    to = _empty_target(to)
    resolved = resolve(str(run_dir))
    with atomic.folder(to) as tmp:
        tmp.mkdir()
        if resolved.adapter is not None:
            config = json.loads((resolved.adapter / "adapter_config.json").read_text())
            kind = config.get("peft_type")
            if kind not in ("LORA", "IA3") or config.get("use_dora"):
                raise UserError(f"{run}: a {'DoRA' if config.get('use_dora') else kind} adapter does not interpolate "
                                "by scaling; export it merged (tunesmith export --merge) and train or compare that")
            weights = load_file(resolved.adapter / "adapter_model.safetensors")
            save_file(scale_adapter_weights(weights, alpha, kind), str(tmp / "adapter_model.safetensors"))
            for name in ("adapter_config.json", SETTINGS_FILE):
                if (resolved.adapter / name).is_file():
                    shutil.copy2(resolved.adapter / name, tmp / name)
            kind_out = "adapter"
        else:
            base_ref = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
            tuned = load_base(resolved.path, torch.float32)
            Interpolation(tuned, load_base(resolve(base_ref).path, torch.float32)).set(alpha)
            with quiet_transformers():
                tuned.save_pretrained(tmp)
            kind_out = "model"
        load_tokenizer(tokenizer_dir(resolved)).save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / "README.md").write_text(model_card(resolved, kind_out, files,
                                                  {"interpolation": f"α = {alpha:g} of the way from the base model "
                                                                    "to the tuned one (θ₀ + α(θ − θ₀))"}))
    return {"to": str(to), "kind": kind_out, "alpha": alpha, "run": str(run_dir)}
