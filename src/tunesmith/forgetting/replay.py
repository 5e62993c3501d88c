"""Replay data: general examples mixed into training so the model keeps what it could do.

The default source is self-replay: the base model's own greedy replies to a bundled set of
general prompts (disjoint from the prompts the drift probe uses), generated once and cached.
Training on its own outputs asks the model to keep behaving as it did off-task, with no outside
data needed. A data path instead replays the user's general data.
"""

from __future__ import annotations

import re

from tunesmith.data.layouts import Example
from tunesmith.data.records import load_examples
from tunesmith.forgetting.probe import base_replies, general_prompts
from tunesmith.forgetting.reference import BaseReference

_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?=\s)|\n")  # not the "2." of a numbered list


def whole_sentences(reply: str) -> str:
    """A reply cut at the generation limit, trimmed back to its last complete sentence (training
    on a cut reply followed by end-of-turn would teach stopping mid-sentence)."""
    if reply.rstrip().endswith((".", "!", "?")):
        return reply
    ends = [m.start() for m in _SENTENCE_END.finditer(reply)]
    return reply[: ends[-1] + 1].rstrip() if ends and ends[-1] > len(reply) // 3 else reply


def replay_examples(source: str, base: BaseReference) -> list[Example]:
    if source != "self":
        return load_examples(source)
    _, prompts = general_prompts()
    replies = base_replies(base, prompts)
    return [
        Example(
            messages=[{"role": "user", "content": p}, {"role": "assistant", "content": whole_sentences(r)}],
            source=f"self-replay:{i + 1}",
            layout="messages",
        )
        for i, (p, r) in enumerate(zip(prompts, replies))
        if r.strip()
    ]


def replay_weight(ratio: float, n_task: float, n_replay: int) -> float:
    """Source weight that makes replay `ratio` of the examples seen per epoch:
    w * n_replay / (n_task + w * n_replay) = ratio."""
    return ratio / (1 - ratio) * n_task / n_replay


def general_prompt_ids(source: str, tokenizer) -> list[list[int]]:
    """Token ids of the prompts `forgetting.self_distill` answers: the replay prompts of the bundled
    set ('self'), or each example's prompt (everything before its last reply) in a data file."""
    from tunesmith.data.chat import prompt_ids
    from tunesmith.data.prompts import prompt_of
    from tunesmith.errors import UserError

    if source == "self":
        conversations = [[{"role": "user", "content": p}] for p in general_prompts()[1]]
    else:
        conversations = [prompt_of(e) for e in load_examples(source)]
    if not conversations:
        raise UserError(f"forgetting.self_distill.prompts {source}: no prompts")
    return [prompt_ids(tokenizer, c) for c in conversations]
