"""The policy's own replies as a training batch: what on-policy methods (GRPO/RLOO, on-policy
distillation) sample before their loss."""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.chat import IGNORE
from tunesmith.data.collate import collate_tokens
from tunesmith.data.shared_prefix import shared_prefix_row
from tunesmith.engine.step import to_device
from tunesmith.eval.generate import Sampling, sample_tokens

if TYPE_CHECKING:
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.batch import Batch


def batch_digest(features: list[dict[str, Any]], salt: str) -> int:
    """A 64-bit number from a batch's tokens and `salt`: what a method draws from for a batch, the
    same however often (and after whatever resume) the batch comes."""
    digest = hashlib.sha256(salt.encode())
    for f in features:
        digest.update(struct.pack(f"<{len(f['input_ids'])}q", *f["input_ids"]))
    return int.from_bytes(digest.digest()[:8], "little")


def sample_replies(
    model: Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    sampling: Sampling,
    share_prompts: bool = False,
) -> tuple[Batch, list[list[int]]]:
    """Each prompt's reply (sampled without gradients, every row decoding together) and the batch
    of prompt + reply on the model's device whose trained tokens are the replies, with the reply
    each of those tokens belongs to (`reply_of_token`). With `share_prompts`, the replies to one
    prompt (consecutive equal prompts, as a group samples them) are packed after that prompt in
    one row (`data/shared_prefix.py`), so that training computes the prompt once for all of them;
    the model must run segment attention (`logprobs.takes_segments`). `n_tokens` counts each
    reply with its prompt either way."""
    dev = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        replies = sample_tokens(model, tokenizer, prompts, sampling, rows=len(prompts))
    model.train(was_training)
    sequences = [(p + r, [IGNORE] * len(p) + r) for p, r in zip(prompts, replies)]
    if share_prompts and all(prompts):
        rows = shared_prompt_rows(prompts, sequences)
    else:
        rows = [{"input_ids": ids, "labels": labels} for ids, labels in sequences]
    batch = collate_tokens(rows, tokenizer.pad_token_id)
    batch["n_tokens"] = sum(len(ids) for ids, _ in sequences)
    batch["n_replies"] = len(replies)
    batch["reply_of_token"] = torch.repeat_interleave(
        torch.arange(len(replies)), torch.tensor([len(r) for r in replies], dtype=torch.long)
    )
    return to_device(batch, dev), replies


def shared_prompt_rows(prompts: list[list[int]], sequences: list[tuple[list[int], list[int]]]) -> list[dict[str, Any]]:
    """A packed row per run of equal consecutive prompts: their sequences (prompt + reply, labels)
    after the prompt (`data/shared_prefix.py`)."""
    rows, i = [], 0
    while i < len(prompts):
        j = next((j for j in range(i, len(prompts)) if prompts[j] != prompts[i]), len(prompts))
        rows.append(shared_prefix_row(sequences[i:j], len(prompts[i])))
        i = j
    return rows


def trained_sequences(batch: Batch) -> list[tuple[list[int], list[int]]]:
    """Each row's tokens (padding dropped) and the positions within them that carry loss."""
    out = []
    attention_mask = batch["attention_mask"]
    assert attention_mask is not None  # sampled rows are padded, not packed
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), attention_mask.tolist()):
        kept = [i for i, m in enumerate(mask) if m]
        tokens = [ids[i] for i in kept]
        out.append((tokens, [j for j, i in enumerate(kept) if j > 0 and labels[i] != IGNORE]))
    return out


def sample_records(
    tokenizer: PreTrainedTokenizerBase,
    batch: Batch,
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    per_token: torch.Tensor,
) -> list[dict[str, Any]]:
    """One record per sampled sequence: its prompt, its reply's tokens, and each token's student
    and teacher log-probability and loss (rounded to 1e-5: a log, not a checkpoint)."""
    out: list[dict[str, Any]] = []
    at = 0
    values = [t.tolist() for t in (student_logp, teacher_logp, per_token)]
    for tokens, positions in trained_sequences(batch):
        reply = [tokens[j] for j in positions]
        n = len(reply)
        student, teacher, loss = (v[at : at + n] for v in values)
        at += n
        out.append(
            {
                "prompt": tokenizer.decode(tokens[: positions[0]] if positions else tokens),
                "reply": tokenizer.decode(reply),
                "tokens": [tokenizer.decode([t]) for t in reply],
                "ids": reply,
                "student_logprob": [round(x, 5) for x in student],
                "teacher_logprob": [round(x, 5) for x in teacher],
                "loss": [round(x, 5) for x in loss],
            }
        )
    return out
