"""The policy's own replies as a training batch: what on-policy methods (GRPO/RLOO, on-policy
distillation) sample before their loss."""

from __future__ import annotations

import torch

from tunesmith.data.chat import IGNORE
from tunesmith.data.collate import collate_tokens
from tunesmith.eval.generate import Sampling, sample_tokens


def sample_replies(model, tokenizer, prompts: list[list[int]], sampling: Sampling) -> tuple[dict, list[list[int]]]:
    """Each prompt's reply (sampled without gradients, every row decoding together) and the batch
    of prompt + reply on the model's device whose trained tokens are the replies."""
    dev = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        replies = sample_tokens(model, tokenizer, prompts, sampling, rows=len(prompts))
    model.train(was_training)
    rows = [{"input_ids": p + r, "labels": [IGNORE] * len(p) + r} for p, r in zip(prompts, replies)]
    batch = collate_tokens(rows, tokenizer.pad_token_id)
    return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}, replies
