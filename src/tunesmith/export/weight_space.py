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
                raise UserError(
                    f"{run}: a {'DoRA' if config.get('use_dora') else kind} adapter does not interpolate "
                    "by scaling; export it merged (tunesmith export --merge) and train or compare that"
                )
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
        (tmp / "README.md").write_text(
            model_card(
                resolved,
                kind_out,
                files,
                {"interpolation": f"α = {alpha:g} of the way from the base model to the tuned one (θ₀ + α(θ − θ₀))"},
            )
        )
    return {"to": str(to), "kind": kind_out, "alpha": alpha, "run": str(run_dir)}


# PEFT's combination for each merge method (add_weighted_adapter). task_arithmetic is PEFT's "cat":
# the adapters side by side, so the merged update is exactly Σ wᵢ·ΔWᵢ (rank Σ rᵢ); the others combine
# the adapters' A and B matrices and need one rank.
MERGE_METHODS = {
    "linear": "linear",
    "task_arithmetic": "cat",
    "ties": "ties",
    "dare_linear": "dare_linear",
    "dare_ties": "dare_ties",
}
NEEDS_DENSITY = ("ties", "dare_linear", "dare_ties")


def merged_adapter_model(
    sources: list[str], method: str, weights: list[float] | None = None, density: float | None = None, seed: int = 0
):
    """The base with every source adapter loaded and their merge added and active as "merged";
    returns (model, the first source's Resolved)."""
    from peft import PeftModel

    if method not in MERGE_METHODS:
        raise UserError(f"--method {method}: choose one of {', '.join(MERGE_METHODS)}")
    if len(sources) < 2:
        raise UserError("merge: give two or more adapter runs to merge")
    weights = list(weights) if weights else [1.0] * len(sources)
    if len(weights) != len(sources):
        raise UserError(f"--weights: {len(weights)} given for {len(sources)} adapters")
    if method in NEEDS_DENSITY and not (density is not None and 0 < density <= 1):
        raise UserError(f"--density: {method} keeps this share of each update's entries; give one in (0, 1]")
    resolved = [resolve(s) for s in sources]
    configs = []
    for source, r in zip(sources, resolved):
        if r.adapter is None:
            raise UserError(f"{source}: not an adapter run (merge combines LoRA adapters on one base)")
        config = json.loads((r.adapter / "adapter_config.json").read_text())
        if config.get("peft_type") != "LORA" or config.get("use_dora"):
            raise UserError(
                f"{source}: a {'DoRA' if config.get('use_dora') else config.get('peft_type')} adapter; "
                "merge combines LoRA adapters"
            )
        if (r.adapter / SETTINGS_FILE).is_file():
            raise UserError(
                f"{source}: a QLoRA adapter (its base is quantized); merge LoRA adapters on an unquantized base"
            )
        configs.append(config)
    bases = {str(r.path.resolve()) for r in resolved}
    if len(bases) > 1:
        raise UserError(f"merge: the adapters are on different base models ({', '.join(sorted(bases))})")
    ranks = sorted({c["r"] for c in configs})
    if MERGE_METHODS[method] != "cat" and len(ranks) > 1:
        raise UserError(
            f"--method {method} combines the adapters' matrices and needs one rank (these have r = "
            f"{', '.join(map(str, ranks))}); use task_arithmetic"
        )
    if any(r.adapter is None for r in resolved):
        raise UserError("merge: every run must be an adapter run")
    model = PeftModel.from_pretrained(
        load_base(resolved[0].path, torch.float32), str(resolved[0].adapter), adapter_name="a0"
    )
    for i, r in enumerate(resolved[1:], start=1):
        model.load_adapter(str(r.adapter), adapter_name=f"a{i}")
    torch.manual_seed(seed)  # DARE drops entries at random
    model.add_weighted_adapter(
        [f"a{i}" for i in range(len(sources))],
        weights,
        "merged",
        combination_type=MERGE_METHODS[method],
        density=density,
    )
    model.set_adapter("merged")
    return model.eval(), resolved[0]


def merge_adapters(
    sources: list[str],
    method: str,
    to: Path,
    weights: list[float] | None = None,
    density: float | None = None,
    seed: int = 0,
) -> dict:
    """Write the merge of LoRA adapters on one base as one PEFT adapter folder."""
    to = _empty_target(to)
    model, first = merged_adapter_model(sources, method, weights, density, seed)
    with atomic.folder(to) as tmp:
        tmp.mkdir()
        with quiet_transformers():
            model.save_pretrained(tmp / "saved", selected_adapters=["merged"])
        saved = tmp / "saved" / "merged"  # PEFT writes an adapter other than "default" to a subfolder
        for f in saved.iterdir():
            f.rename(tmp / f.name)
        shutil.rmtree(tmp / "saved")
        config = json.loads((tmp / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(first.path)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        load_tokenizer(tokenizer_dir(first)).save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        detail = f"{method} of {', '.join(sources)} with weights {weights or [1.0] * len(sources)}" + (
            f", density {density}" if density is not None else ""
        )
        (tmp / "README.md").write_text(model_card(first, "adapter", files, {"merge": detail}))
    return {
        "to": str(to),
        "method": method,
        "sources": sources,
        "weights": weights or [1.0] * len(sources),
        "density": density,
        "rank": config["r"],
    }
