"""The policy's own replies as a training batch: what on-policy methods (GRPO/RLOO, on-policy
distillation) sample before their loss."""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.data.chat import IGNORE
from tunesmith.data.collate import collate_tokens
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
    one row (`shared_prompt_rows`), so that training computes the prompt once for all of them;
    the model must run segment attention (`logprobs.takes_segments`)."""
    dev = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        replies = sample_tokens(model, tokenizer, prompts, sampling, rows=len(prompts))
    model.train(was_training)
    if share_prompts and all(prompts):
        rows = shared_prompt_rows(prompts, replies)
    else:
        rows = [{"input_ids": p + r, "labels": [IGNORE] * len(p) + r} for p, r in zip(prompts, replies)]
    batch = collate_tokens(rows, tokenizer.pad_token_id)
    batch["reply_of_token"] = torch.repeat_interleave(
        torch.arange(len(replies)), torch.tensor([len(r) for r in replies], dtype=torch.long)
    )
    return to_device(batch, dev), replies


def shared_prompt_rows(prompts: list[list[int]], replies: list[list[int]]) -> list[dict[str, Any]]:
    """One packed row per run of equal prompts: the prompt but its last token, then for each reply
    that last token and the reply, at the positions they have after the prompt, each seeing the
    prompt's keys first (`segment_prefixes`). The last prompt token is repeated in every reply's
    segment so that its output, which predicts the reply's first token, sits right before that
    token as in a row of its own; each reply's log-probabilities are then those of prompt + reply
    alone, with the prompt computed once for the group."""
    rows, i = [], 0
    while i < len(prompts):
        prompt, j = prompts[i], i
        while j < len(prompts) and prompts[j] == prompt:
            j += 1
        shared = len(prompt) - 1
        ids, labels, positions = list(prompt[:-1]), [IGNORE] * shared, list(range(shared))
        segments: list[tuple[int, int]] = [(0, shared)] if shared else []
        prefixes: list[int | None] = [None] if shared else []
        for reply in replies[i:j]:
            start = len(ids)
            ids += [prompt[-1], *reply]
            labels += [IGNORE, *reply]
            positions += range(shared, shared + 1 + len(reply))
            segments.append((start, len(ids)))
            prefixes.append(0 if shared else None)
        rows.append(
            {
                "input_ids": ids,
                "labels": labels,
                "position_ids": positions,
                "segments": segments,
                "segment_prefixes": prefixes,
            }
        )
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
