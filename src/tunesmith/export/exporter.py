"""Export a run or a model reference as folders the ecosystem loads.

- an adapter run (LoRA, IA3, prefix, prompt), default: the PEFT adapter (+ tokenizer) that
  `peft.PeftModel.from_pretrained` loads;
- a LoRA or IA3 run with merge=True, a full fine-tune, or any model reference: a Hugging Face model
  folder (safetensors + tokenizer + chat template) for `AutoModelForCausalLM.from_pretrained`
  (a reward model's: `AutoModelForSequenceClassification.from_pretrained`);
- format="gguf": the merged model as one GGUF file (f16 or q8_0) for llama.cpp-style runtimes.
Every export carries a model card (README.md). The folder is written under a temporary name and
renamed, so it is never half-written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tunesmith import atomic
from tunesmith.errors import UserError
from tunesmith.export import FORMATS, GGUF_QUANTS
from tunesmith.export.model_card import model_card
from tunesmith.model.load import (
    is_reward_checkpoint,
    load_for_inference,
    load_reward_model,
    load_tokenizer,
    quiet_transformers,
    tokenizer_dir,
)
from tunesmith.model.quantize import SETTINGS_FILE, read_settings
from tunesmith.model.resolve import resolve

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export(
    reference: str,
    to: Path,
    merge: bool = False,
    dtype: torch.dtype = torch.float32,
    format: str = "hf",
    quant: str = "f16",
) -> dict:
    if format not in FORMATS:
        raise UserError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if quant not in GGUF_QUANTS:
        raise UserError(f"--quant {quant}: choose one of {', '.join(GGUF_QUANTS)}")
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to}: export target exists and is not empty")
    resolved = resolve(reference)
    result_extra: dict = {}
    with atomic.folder(to) as tmp:
        if format == "gguf":
            tmp.mkdir()
            result_extra = export_gguf(resolved, tmp, quant)
            kind = "gguf"
        elif resolved.adapter is not None and not merge:
            tmp.mkdir()
            for name in ADAPTER_FILES + (SETTINGS_FILE,):
                if (resolved.adapter / name).is_file():
                    shutil.copy2(resolved.adapter / name, tmp / name)
            load_tokenizer(tokenizer_dir(resolved)).save_pretrained(tmp)
            kind = "adapter"
        else:
            if is_reward_checkpoint(resolved):  # a scorer: AutoModelForSequenceClassification loads it
                model, tokenizer = load_reward_model(resolved, dtype=dtype)
            else:
                model, tokenizer = load_for_inference(resolved, dtype=dtype, merge=True)
            if hasattr(model, "peft_config"):
                raise UserError(
                    f"{reference}: a {model.active_peft_config.peft_type.value.lower()} adapter adds virtual "
                    "tokens and cannot merge into the base; export it without --merge"
                )
            with quiet_transformers():
                model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            kind = "merged" if resolved.adapter is not None else "model"
            if resolved.adapter is not None and read_settings(resolved.adapter) is not None:
                check = merge_check(model, *load_for_inference(resolved, merge=False))
                (tmp / "merge_check.json").write_text(json.dumps(check, indent=2))
                result_extra["merge_check"] = check
        files = sorted(p.name for p in tmp.iterdir())
        card_extra = {"GGUF": f"{quant}, {result_extra['bytes'] / 2**20:.1f} MiB"} if kind == "gguf" else None
        (tmp / "README.md").write_text(model_card(resolved, kind, files, card_extra))
    if kind == "gguf":
        result_extra["file"] = str(to / result_extra["file"])
    return {"to": str(to), "kind": kind, "base": str(resolved.path), **result_extra}


def export_gguf(resolved, folder: Path, quant: str) -> dict:
    """The merged model as `<name>-<quant>.gguf` in `folder`."""
    from tunesmith.export.gguf import write_gguf

    if is_reward_checkpoint(resolved):
        raise UserError(
            f"{resolved.reference}: a reward model has a score head, not a language-model head; "
            "GGUF export is for language models"
        )
    model, tokenizer = load_for_inference(resolved, dtype=torch.float32, merge=True)
    if hasattr(model, "peft_config"):
        raise UserError(
            f"{resolved.reference}: a {model.active_peft_config.peft_type.value.lower()} adapter adds "
            "virtual tokens, which GGUF cannot hold; export it in Hugging Face layout"
        )
    name = Path(resolved.reference).name if resolved.reference else resolved.path.name
    path = folder / f"{name}-{quant}.gguf"
    info = write_gguf(model.cpu(), tokenizer, path, quant=quant, name=name, source=resolved.path)
    return {"file": str(path.name), **info}


CHECK_PROMPTS = 8
CHECK_TOKENS = 24


def merge_check(merged, unmerged, tokenizer) -> dict:
    """A QLoRA merge puts the adapter on the dequantized base: the same function up to the
    4/8-bit matmul's rounding. Measured, not assumed: logits on general prompts and greedy replies."""
    from tunesmith.data.chat import prompt_ids
    from tunesmith.eval.generate import Sampling, generate_all
    from tunesmith.forgetting.probe import general_prompts

    conversations = [[{"role": "user", "content": p}] for p in general_prompts()[0][:CHECK_PROMPTS]]
    diff = 0.0
    with torch.no_grad():
        for conv in conversations:
            ids = torch.tensor([prompt_ids(tokenizer, conv)], device=next(unmerged.parameters()).device)
            a, b = (
                merged(input_ids=ids.to(next(merged.parameters()).device)).logits.float(),
                unmerged(input_ids=ids).logits.float(),
            )
            diff = max(diff, float((a.cpu() - b.cpu()).abs().max()))
    sampling = Sampling(max_new_tokens=CHECK_TOKENS)
    same = sum(
        x == y
        for x, y in zip(
            generate_all(merged, tokenizer, conversations, sampling),
            generate_all(unmerged, tokenizer, conversations, sampling),
        )
    )
    return {
        "prompts": len(conversations),
        "max_abs_logit_diff": diff,
        "greedy_identical": same,
        "greedy_tokens": CHECK_TOKENS,
    }
