"""Replies for evaluation, baselines, the forgetting probe, teachers and RL: the generation
engine (`generation/batch.py`), or transformers' generate where the engine cannot model the
adapter (prefix and prompt tuning)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.chat import prompt_ids
from tunesmith.generation.sampling import RowSettings

BATCH_SIZE = 32  # replies decoding at once


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
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
    config = model.active_peft_config
    base = model.get_base_model()
    virtual = torch.ones((ids.shape[0], config.num_virtual_tokens), dtype=mask.dtype, device=mask.device)
    mask = torch.cat([virtual, mask], dim=1)
    if config.peft_type.value == "PREFIX_TUNING":
        return base.generate(
            input_ids=ids, attention_mask=mask, cache=model.get_prompt(batch_size=ids.shape[0]), **kwargs
        )[:, ids.shape[1] :]
    embeds = base.get_input_embeddings()(ids)
    embeds = torch.cat([model.get_prompt(batch_size=ids.shape[0]).to(embeds.dtype), embeds], dim=1)
    return base.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # embeddings in: new tokens out


def left_padded(prompts: list[list[int]], pad: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(dev), mask.to(dev)


def sample_tokens(
    model, tokenizer, prompts: list[list[int]], sampling: Sampling, rows: int = BATCH_SIZE, on_done=None
) -> list[list[int]]:
    """Each prompt's generated tokens (through EOS where it came): the generation engine, each
    prompt a row of its own, or, for prefix and prompt tuning, transformers' generate on
    left-padded batches of `rows`."""
    from tunesmith.generation.batch import generate_tokens, supported

    if supported(model):
        settings = RowSettings(sampling.temperature, sampling.top_p, sampling.top_k)
        return generate_tokens(
            model,
            prompts,
            sampling.max_new_tokens,
            settings,
            frozenset({tokenizer.eos_token_id}),
            rows=rows,
            on_done=on_done,
        )
    out = []
    for start in range(0, len(prompts), rows):
        chunk = prompts[start : start + rows]
        ids, mask = left_padded(chunk, tokenizer.pad_token_id, next(model.parameters()).device)
        with torch.no_grad():
            new = generate_ids(model, ids, mask, **sampling.kwargs(tokenizer)).tolist()
        for row in new:
            end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            out.append(row[:end])
            if on_done is not None:
                on_done(len(out) - 1)
    return out


def generate_batch(
    model, tokenizer, conversations: list[list[dict]], sampling: Sampling, tools: list[list[dict] | None] | None = None
) -> list[str]:
    """Assistant replies to each conversation (with its tools, where given)."""
    tools = tools or [None] * len(conversations)
    prompts = [prompt_ids(tokenizer, c, t) for c, t in zip(conversations, tools)]
    return [
        tokenizer.decode(row, skip_special_tokens=True).strip()
        for row in sample_tokens(model, tokenizer, prompts, sampling, rows=max(1, len(prompts)))
    ]


def generate_all(
    model,
    tokenizer,
    conversations: list[list[dict]],
    sampling: Sampling,
    batch_size: int = BATCH_SIZE,
    on_batch=None,
    tools: list[list[dict] | None] | None = None,
) -> list[str]:
    """Replies for many conversations, `batch_size` decoding at once; `on_batch(n)` as n more
    are done."""
    from tunesmith.generation.batch import supported

    tools = tools or [None] * len(conversations)
    if supported(model):
        prompts = [prompt_ids(tokenizer, c, t) for c, t in zip(conversations, tools)]
        done = (lambda i: on_batch(1)) if on_batch is not None else None
        return [
            tokenizer.decode(row, skip_special_tokens=True).strip()
            for row in sample_tokens(model, tokenizer, prompts, sampling, rows=batch_size, on_done=done)
        ]
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
