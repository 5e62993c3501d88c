"""Held-out loss of a trained model, measured the same way whichever tool trained it.

Each tool reports its own training loss with its own averaging; to compare what two tools'
runs learned, one piece of code loads each result (a PEFT adapter over the base, or full
weights) and takes the token-weighted mean cross-entropy over the replies of the held-out
prompt/completion examples, in fp32. Depends only on torch, transformers and PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load(result: Path, base: Path):
    from transformers import AutoModelForCausalLM

    if (result / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), result)
        return model.merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(result, dtype=torch.float32)


@torch.no_grad()
def heldout_loss(model, tokenizer, path: Path) -> float:
    total, count = 0.0, 0
    model.eval()
    for line in path.read_text().splitlines():
        ex = json.loads(line)
        prompt = tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([ids])).logits[0, len(p_ids) - 1 : -1].float()
        targets = torch.tensor(ids[len(p_ids) :])
        total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += len(targets)
    return total / count


def measure(result: Path, base: Path, heldout: Path) -> float:
    from transformers import AutoTokenizer

    return heldout_loss(load(result, base), AutoTokenizer.from_pretrained(base), heldout)
