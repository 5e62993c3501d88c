"""What a distilled student costs and keeps, next to its teacher, measured on this machine:
parameters, weights on disk, generation speed, task score, general QA.

Written to `eval/distill.json` and drawn in `plots/distill.png` (`report/plots.student_vs_teacher`);
the run's report shows both.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from tunesmith.eval.bootstrap import bootstrap_ci
from tunesmith.eval.generate import Sampling, generate_ids, left_padded
from tunesmith.eval.metrics import contains_answer

SPEED_PROMPTS = 6
SPEED_TOKENS = 32


def weights_mib(model) -> float:
    """Bytes of the model's weights in fp32 (what `tunesmith export` writes), shared ones once."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * 4
    return total / 2**20


def generation_speed(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = SPEED_TOKENS) -> float:
    """New tokens per second, one request at a time and every request run to `max_new_tokens`
    (so both models produce the same amount), after a warm-up request."""
    from tunesmith.data.chat import prompt_ids

    dev = next(model.parameters()).device
    kwargs = {**Sampling(max_new_tokens=max_new_tokens).kwargs(tokenizer), "min_new_tokens": max_new_tokens}
    runs = [left_padded([prompt_ids(tokenizer, c)], tokenizer.pad_token_id, dev) for c in conversations]
    with torch.no_grad():
        generate_ids(model, *runs[0], **kwargs)
        t0 = time.perf_counter()
        tokens = sum(generate_ids(model, ids, mask, **kwargs).shape[1] for ids, mask in runs)
    return tokens / (time.perf_counter() - t0)


def general_qa(model, tokenizer, limit: int | None) -> dict:
    from tunesmith.forgetting.probe import probe_sets, qa_answers

    items, _ = probe_sets(limit)
    answers = qa_answers(model, tokenizer, items)
    return bootstrap_ci([contains_answer(a, q["answers"]) for q, a in zip(items, answers)])


def measure(model, tokenizer, test_examples, conversations, qa_limit: int | None, task_kwargs: dict) -> dict:
    from tunesmith.eval.task import evaluate_task

    out = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_mib": weights_mib(model),
        "tokens_per_s": generation_speed(model, tokenizer, conversations),
        "general_qa": general_qa(model, tokenizer, qa_limit),
    }
    if test_examples:
        out["task"] = evaluate_task(model, tokenizer, test_examples, label="", latency_samples=0, **task_kwargs)[
            "scores"
        ]
    return out


def compare(
    student,
    tokenizer,
    teacher_ref: str,
    dtype: torch.dtype,
    test_examples: list,
    qa_limit: int | None,
    task_kwargs: dict,
    primary: str,
) -> dict:
    """Both models measured the same way; ratios are student / teacher."""
    from tunesmith.eval.task import split_reference
    from tunesmith.forgetting.probe import general_prompts
    from tunesmith.model.load import load_for_inference

    conversations = [[{"role": "user", "content": p}] for p in general_prompts()[0][:SPEED_PROMPTS]]
    if test_examples:
        conversations = [split_reference(e)[0] for e in test_examples[:SPEED_PROMPTS]]
    result: dict[str, Any] = {
        "student": measure(student, tokenizer, test_examples, conversations, qa_limit, task_kwargs)
    }
    teacher, teacher_tok = load_for_inference(teacher_ref, dtype=dtype)
    result["teacher"] = measure(teacher, teacher_tok, test_examples, conversations, qa_limit, task_kwargs)
    del teacher
    s, t = result["student"], result["teacher"]
    result["ratios"] = {
        "parameters": s["parameters"] / t["parameters"],
        "weights": s["weights_mib"] / t["weights_mib"],
        "speed": s["tokens_per_s"] / t["tokens_per_s"],
        "general_qa": s["general_qa"]["mean"] / t["general_qa"]["mean"] if t["general_qa"]["mean"] else None,
    }
    if test_examples:
        result["ratios"]["task"] = (
            s["task"][primary]["mean"] / t["task"][primary]["mean"] if t["task"][primary]["mean"] else None
        )
    result.update(
        {
            "teacher_ref": teacher_ref,
            "primary": primary,
            "speed_tokens": SPEED_TOKENS,
            "speed_prompts": len(conversations),
        }
    )
    return result
