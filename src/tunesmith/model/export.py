"""Export a run or a model reference as folders the ecosystem loads.

- an adapter run (LoRA, IA3, prefix, prompt), default: the PEFT adapter (+ tokenizer) that `peft.PeftModel.from_pretrained` loads;
- a LoRA or IA3 run with merge=True, a full fine-tune, or any model reference: a Hugging Face model
  folder (safetensors + tokenizer + chat template) for `AutoModelForCausalLM.from_pretrained`.
The folder is written under a temporary name and renamed, so it is never half-written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from tunesmith.errors import UserError
from tunesmith.model.load import load_for_inference, load_tokenizer, tokenizer_dir
from tunesmith.model.resolve import resolve

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export(reference: str, to: Path, merge: bool = False, dtype: torch.dtype = torch.float32) -> dict:
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to}: export target exists and is not empty")
    resolved = resolve(reference)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.parent / f".tmp-{to.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if resolved.adapter is not None and not merge:
            tmp.mkdir()
            for name in ADAPTER_FILES:
                shutil.copy2(resolved.adapter / name, tmp / name)
            load_tokenizer(tokenizer_dir(resolved)).save_pretrained(tmp)
            kind = "adapter"
        else:
            model, tokenizer = load_for_inference(resolved, dtype=dtype, merge=True)
            if hasattr(model, "peft_config"):
                raise UserError(f"{reference}: a {model.active_peft_config.peft_type.value.lower()} adapter adds virtual "
                                "tokens and cannot merge into the base; export it without --merge")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            kind = "merged" if resolved.adapter is not None else "model"
        if to.exists():
            to.rmdir()
        os.rename(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"to": str(to), "kind": kind, "base": str(resolved.path)}
