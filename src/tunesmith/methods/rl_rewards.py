"""Rewards for online RL: Python functions and reward models, weighted and summed.

A reward function takes (prompt, completion, reference) and returns a number: `prompt` is the
last user message, `completion` the sampled reply, `reference` the example's reference answer
(a completion or last assistant turn in the data, or a prompt record's `reference`; None if the
data has none). Built-ins:

  exact_match     1 if the reply equals the reference (surrounding whitespace ignored), else 0
  regex           1 if `pattern` matches the whole reply (Python `re.fullmatch`, whitespace
                  stripped), else 0
  json_valid      1 if the reply parses as JSON, else 0
  length_penalty  −(characters beyond `target_length`) / `target_length`, 0 within it

`module:function` names your own (imported from the working directory). A reward model is a
`method: reward` run or its export, read at the conversation's last token. A grader is one of
OpenAI's (methods/graders.py), reading the reply and the training record it answered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.errors import UserError
from tunesmith.eval.metrics import load_user_metric

if TYPE_CHECKING:
    from tunesmith.config.schema import RewardSpec
    from tunesmith.methods.graders import Grader

RewardFn = Callable[[str, str, "str | None"], float]


def exact_match(prompt: str, completion: str, reference: str | None) -> float:
    if reference is None:
        raise UserError(
            "reward exact_match: the data has no reference answers (use prompt/completion records, "
            "or a 'reference' in prompt records)"
        )
    return float(completion.strip() == reference.strip())


def json_valid(prompt: str, completion: str, reference: str | None) -> float:
    try:
        json.loads(completion)
    except ValueError:
        return 0.0
    return 1.0


def regex_reward(pattern: str) -> RewardFn:
    compiled = re.compile(pattern)
    return lambda prompt, completion, reference: float(compiled.fullmatch(completion.strip()) is not None)


def length_penalty(target_length: int) -> RewardFn:
    return lambda prompt, completion, reference: -max(0, len(completion) - target_length) / target_length


BUILT_IN = ("exact_match", "regex", "json_valid", "length_penalty")


def reward_function(spec: RewardSpec) -> tuple[str, RewardFn]:
    """(name for the metrics, function) of one `rl.rewards` entry with `function:` set."""
    name = spec.function
    assert name is not None  # a function reward
    if name == "exact_match":
        return name, exact_match
    if name == "json_valid":
        return name, json_valid
    if name == "regex":
        assert spec.pattern is not None  # the config asks regex for one
        return name, regex_reward(spec.pattern)
    if name == "length_penalty":
        assert spec.target_length is not None  # the config asks length_penalty for one
        return name, length_penalty(spec.target_length)
    func_name, loaded = load_user_metric(name, key="rl.rewards.function")
    func: Callable[..., object] = loaded  # a reward function takes (prompt, completion, reference)

    def user(prompt: str, completion: str, reference: str | None) -> float:
        value = func(prompt, completion, reference)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"rl.rewards.function {name}: returned {value!r}; a reward is a number")
        return float(value)

    return func_name, user


class RewardModelScorer:
    """A trained reward model (a `method: reward` run, or its export), loaded once, scoring
    (prompt messages + reply) conversations in batches without gradients."""

    def __init__(self, reference: str, dtype: torch.dtype = torch.float32, batch_size: int = 16) -> None:
        from tunesmith.model.load import load_reward_model

        self.model, self.tokenizer = load_reward_model(reference, dtype)
        self.batch_size = batch_size
        self.name = f"rm_{Path(reference).name}"

    def __call__(self, conversations: list[list[dict[str, Any]]], max_length: int = 2048) -> list[float]:
        from tunesmith.data.chat import encode_chat
        from tunesmith.data.collate import collate_tokens
        from tunesmith.methods.reward_model import sequence_scores

        dev = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(conversations), self.batch_size):
            rows = []
            for messages in conversations[start : start + self.batch_size]:
                ids = encode_chat(self.tokenizer, messages, max_length, "all").input_ids
                rows.append({"input_ids": ids, "labels": ids})
            batch = collate_tokens(rows, self.tokenizer.pad_token_id)
            mask = batch["attention_mask"]
            assert mask is not None  # conversations are padded, not packed
            with torch.no_grad():
                out = sequence_scores(self.model, batch["input_ids"].to(dev), mask.to(dev))
            scores += [float(s) for s in out]
        return scores


class Rewards:
    """Every configured reward, weighted and summed; each also reported on its own."""

    def __init__(self, specs: list[RewardSpec], dtype: torch.dtype = torch.float32, isolation: str = "auto") -> None:
        self.functions: list[tuple[str, float, RewardFn]] = []
        self.models: list[tuple[str, float, RewardModelScorer]] = []
        self.graders: list[tuple[str, float, Grader]] = []
        for spec in specs:
            if spec.function is not None:
                name, fn = reward_function(spec)
                self.functions.append((name, spec.weight, fn))
            elif spec.grader is not None:
                from tunesmith.methods.graders import build_grader

                grader = build_grader(spec.grader, dtype, isolation)
                self.graders.append((f"grader_{grader.name}", spec.weight, grader))
            else:
                assert spec.model is not None  # exactly one source is set
                scorer = RewardModelScorer(spec.model, dtype)
                self.models.append((scorer.name, spec.weight, scorer))

    def __call__(
        self,
        prompts: list[list[dict[str, Any]]],
        completions: list[str],
        references: list[str | None],
        items: list[dict[str, Any] | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total reward per completion, each named reward per completion); `items`: the training
        record each completion answered (what graders read)."""
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions))
        for name, weight, fn in self.functions:
            last_user = [next((m["content"] for m in reversed(p) if m["role"] == "user"), "") for p in prompts]
            values = torch.tensor(
                [fn(u, c, r) for u, c, r in zip(last_user, completions, references)], dtype=torch.float32
            )
            parts[name] = values
            total += weight * values
        for name, weight, scorer in self.models:
            values = torch.tensor(
                scorer([p + [{"role": "assistant", "content": c}] for p, c in zip(prompts, completions)])
            )
            parts[name] = values
            total += weight * values
        if self.graders:
            from tunesmith.methods.graders import sample_of

            samples, records = (
                [sample_of(c) for c in completions],
                [i or {} for i in (items or [None] * len(completions))],
            )
            for name, weight, grader in self.graders:
                values = torch.tensor(grader(samples, records), dtype=torch.float32)
                parts[name] = values
                total += weight * values
        return total, parts
