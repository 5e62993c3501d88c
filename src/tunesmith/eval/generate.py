"""Batched generation with the KV cache, for evaluation and the generate command."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.chat import prompt_ids


@dataclass
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0

    def kwargs(self, tokenizer) -> dict:
        out = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self.temperature > 0:
            out.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            out.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return out


def generate_batch(model, tokenizer, conversations: list[list[dict]], sampling: Sampling) -> list[str]:
    """Assistant replies to each conversation; prompts are left-padded into one batch."""
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    dev = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **sampling.kwargs(tokenizer))
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def generate_all(model, tokenizer, conversations: list[list[dict]], sampling: Sampling, batch_size: int = 16,
                 on_batch=None) -> list[str]:
    """Replies for many conversations, batched by prompt length to keep padding small."""
    order = sorted(range(len(conversations)), key=lambda i: len(prompt_ids(tokenizer, conversations[i])))
    replies: list[str] = [""] * len(conversations)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, text in zip(chunk, generate_batch(model, tokenizer, [conversations[i] for i in chunk], sampling)):
            replies[i] = text
        if on_batch is not None:
            on_batch(len(chunk))
    return replies
