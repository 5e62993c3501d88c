"""Task evaluation: greedy replies to a test set, scored, with what each request costs.

The same function scores a tuned model and the prompting baselines (zero-shot and k-shot
in-context prompting of the base model), so the numbers are comparable: same examples, same
decoding, same metrics, and for each the mean prompt tokens and the latency of one request.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunesmith import atomic
from tunesmith.data.chat import prompt_ids
from tunesmith.data.layouts import Example
from tunesmith.data.reasoning import split_reply
from tunesmith.data.tool_format import turn_text
from tunesmith.errors import UserError
from tunesmith.eval.bootstrap import bootstrap_ci
from tunesmith.eval.generate import BATCH_SIZE, Sampling, generate_all, generate_batch
from tunesmith.eval.metrics import apply_user_metric, load_user_metric, score
from tunesmith.eval.tool_metrics import tool_scores


def reference_turn(example: Example) -> tuple[list[dict], dict]:
    """The conversation up to the last assistant turn, and that turn (its calls included)."""
    if example.messages is None or not any(m["role"] == "assistant" for m in example.messages):
        raise UserError(
            f"{example.source}: no assistant reply to score against; use a chat or prompt/completion layout"
        )
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return example.messages[:last], example.messages[last]


def split_reference(example: Example) -> tuple[list[dict], str]:
    """The conversation up to the last assistant turn, and that turn as the reference answer."""
    context, turn = reference_turn(example)
    return context, turn_text(turn)


def shot_label(k: int) -> str:
    return "zero-shot" if k == 0 else f"{k}-shot"


def draw_shots(pool: list[Example], k: int, seed: int = 0) -> list[Example]:
    """k in-context examples drawn from the training split with a fixed seed (the same for every
    test example, as a practitioner would write one few-shot prompt)."""
    if k > len(pool):
        raise UserError(f"eval.shots: {k} shots asked for, but the training data has {len(pool)} examples")
    return random.Random(seed).sample(pool, k)


def build_prompt(messages: list[dict], shots: list[Example], system: str | None) -> list[dict]:
    """[system] + each shot as a user/assistant exchange + the test conversation."""
    out = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        context, answer = reference_turn(shot)
        out += [m for m in context if m["role"] != "system"] + [{k: v for k, v in answer.items() if k != "weight"}]
    own = [m for m in messages if not (system and m["role"] == "system")]
    if out and own and own[0]["role"] == "system":  # the test's own system prompt stays first
        out, own = [own[0]] + out, own[1:]
    return out + own


def measure_latency(
    model, tokenizer, conversations: list[list[dict]], sampling: Sampling, tools: list[list[dict] | None] | None = None
) -> float:
    """Mean seconds for one request at a time (batch 1), after one warm-up request."""
    if not conversations:
        return 0.0
    tools = tools or [None] * len(conversations)
    generate_batch(model, tokenizer, conversations[:1], sampling, tools[:1])
    t0 = time.perf_counter()
    for conv, t in zip(conversations, tools):
        generate_batch(model, tokenizer, [conv], sampling, [t])
    return (time.perf_counter() - t0) / len(conversations)


@dataclass
class TaskPrompts:
    """What every model is asked on a test split, and what its replies are scored against."""

    examples: list[Example]
    prompts: list[list[dict]]
    turns: list[dict]
    tools: list[list[dict] | None]

    @property
    def references(self) -> list[str]:
        return [turn_text(t) for t in self.turns]


def task_prompts(examples: list[Example], shots: Sequence[Example] = (), system: str | None = None) -> TaskPrompts:
    prompts, turns, tools = [], [], []
    for e in examples:
        context, turn = reference_turn(e)
        prompts.append(build_prompt(context, list(shots), system))
        turns.append(turn)
        tools.append(e.tools)
    return TaskPrompts(list(examples), prompts, turns, tools)


def score_replies(
    task: TaskPrompts,
    replies: list[str],
    metric: str | None,
    predictions_path: Path | None,
    extra: list[dict] | None = None,
) -> dict[str, dict]:
    """Every metric of every reply (tool-call metrics where the example has tools, the user's
    metric), written per example to `predictions_path` (with `extra` fields per row); returns
    per-metric means with bootstrap intervals."""
    user_metric = load_user_metric(metric) if metric else None
    split = [split_reply(p) for p in replies]
    thoughts, replies = [t for t, _ in split], [a for _, a in split]  # the answer is scored
    rows = []
    for p, r, turn, t in zip(replies, task.references, task.turns, task.tools):
        s = score(p, r)
        if t:
            s.update(tool_scores(p, turn, t))
        if user_metric is not None:
            s.update(apply_user_metric(*user_metric, p, r))
        rows.append(s)
    if predictions_path is not None:
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (e, p, r, s) in enumerate(zip(task.examples, replies, task.references, rows)):
            thought = {"reasoning": thoughts[i]} if thoughts[i] is not None else {}
            lines.append(
                json.dumps(
                    {
                        "index": i,
                        "source": e.source,
                        **(extra[i] if extra else {}),
                        "prediction": p,
                        **thought,
                        "reference": r,
                        **s,
                    }
                )
                + "\n"
            )
        atomic.write_text(predictions_path, "".join(lines))
    names = sorted({k for s in rows for k in s}, key=lambda k: (k not in rows[0], k))
    return {k: bootstrap_ci([s[k] for s in rows if k in s]) for k in names}


def per_example_scores(path: Path, metric: str) -> list[tuple[str, float]]:
    """(source, value of `metric`) for each row of a predictions file score_replies wrote: what a
    paired comparison of two models on the same examples reads."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["source"], float(r[metric])) for r in rows if metric in r]


def evaluate_task(
    model,
    tokenizer,
    examples: list[Example],
    *,
    label: str,
    shots: Sequence[Example] = (),
    system: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = BATCH_SIZE,
    metric: str | None = None,
    latency_samples: int = 8,
    predictions_path: Path | None = None,
    progress=None,
) -> dict:
    """Score greedy replies on `examples`; returns per-metric means with bootstrap intervals.
    Examples with tools are prompted with them and also get the tool-call metrics."""
    if metric:
        load_user_metric(metric)  # a broken metric fails before generation
    task = task_prompts(examples, shots, system)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    prompt_tokens = [len(prompt_ids(tokenizer, p, t)) for p, t in zip(task.prompts, task.tools)]
    t0 = time.perf_counter()
    preds = generate_all(model, tokenizer, task.prompts, sampling, batch_size, progress, tools=task.tools)
    seconds = time.perf_counter() - t0
    scores = score_replies(task, preds, metric, predictions_path, [{"prompt_tokens": n} for n in prompt_tokens])
    latency = measure_latency(model, tokenizer, task.prompts[:latency_samples], sampling, task.tools[:latency_samples])
    return {
        "label": label,
        "shots": len(shots),
        "n": len(examples),
        "scores": scores,
        "prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
        "latency_s": latency,
        "latency_requests": min(latency_samples, len(task.prompts)),
        "seconds": round(seconds, 2),
        "predictions": predictions_path.name if predictions_path is not None else None,
    }


def primary_interval(result: dict, metric: str) -> dict:
    """The score the report compares on (mean and 95% interval), or a clear error naming those there are."""
    if metric not in result["scores"]:
        raise UserError(f"eval.primary {metric!r}: not among the scores ({', '.join(result['scores'])})")
    return result["scores"][metric]
