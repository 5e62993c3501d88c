"""Batched generation with the KV cache, for evaluation and the generate command."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.chat import prompt_ids


BATCH_SIZE = 32  # prompts per generate call: on a 2-core CPU 157 short replies take 78 s at 16, 58 s at 32, 53 s at 64


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


def generate_ids(model, ids: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """`model.generate` on left-padded prompts; returns only the new tokens.

    Prefix and prompt tuning are generated here rather than by PEFT's own `generate`: with the
    installed transformers (5.x renamed the KV cache argument to `cache`), PEFT does not see the
    cache after the first step and inserts its virtual tokens again at every step, so replies go
    wrong from the second token (tests/test_adapters.py checks against uncached greedy decoding).
    The virtual tokens go in once: prompt tuning as input embeddings before the prompt, prefix
    tuning as a pre-filled KV cache, each with its own attention-mask columns, as in training.
    """
    from tunesmith.model.peft_wrapping import is_prompt_learning

    if not is_prompt_learning(model):
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
    config = model.active_peft_config
    base = model.get_base_model()
    virtual = torch.ones((ids.shape[0], config.num_virtual_tokens), dtype=mask.dtype, device=mask.device)
    mask = torch.cat([virtual, mask], dim=1)
    if config.peft_type.value == "PREFIX_TUNING":
        return base.generate(input_ids=ids, attention_mask=mask, cache=model.get_prompt(batch_size=ids.shape[0]),
                             **kwargs)[:, ids.shape[1]:]
    embeds = base.get_input_embeddings()(ids)
    embeds = torch.cat([model.get_prompt(batch_size=ids.shape[0]).to(embeds.dtype), embeds], dim=1)
    return base.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # embeddings in: new tokens out


def left_padded(prompts: list[list[int]], pad: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids.to(dev), mask.to(dev)


def generate_batch(model, tokenizer, conversations: list[list[dict]], sampling: Sampling,
                   tools: list[list[dict] | None] | None = None) -> list[str]:
    """Assistant replies to each conversation (with its tools, where given); prompts are
    left-padded into one batch."""
    tools = tools or [None] * len(conversations)
    ids, mask = left_padded([prompt_ids(tokenizer, c, t) for c, t in zip(conversations, tools)], tokenizer.pad_token_id,
                            next(model.parameters()).device)
    with torch.no_grad():
        out = generate_ids(model, ids, mask, **sampling.kwargs(tokenizer))
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]


def generate_all(model, tokenizer, conversations: list[list[dict]], sampling: Sampling, batch_size: int = BATCH_SIZE,
                 on_batch=None, tools: list[list[dict] | None] | None = None) -> list[str]:
    """Replies for many conversations, batched by prompt length to keep padding small."""
    tools = tools or [None] * len(conversations)
    order = sorted(range(len(conversations)), key=lambda i: len(prompt_ids(tokenizer, conversations[i], tools[i])))
    replies: list[str] = [""] * len(conversations)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        texts = generate_batch(model, tokenizer, [conversations[i] for i in chunk], sampling, [tools[i] for i in chunk])
        for i, text in zip(chunk, texts):
            replies[i] = text
        if on_batch is not None:
            on_batch(len(chunk))
    return replies
