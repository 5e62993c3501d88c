"""The forgetting probe: what general capability a tuned model kept, measured against its base.

1. General QA: short everyday questions (bundled; four in five the bundled base model answers
   right, one in five it answers wrong, so that gains show as well as losses: selected by
   tools/general_qa/pick_items.py), scored tolerantly (the accepted answer anywhere in the reply, as
   whole words).
2. Drift: the tuned model's mean per-token NLL on the base model's own greedy replies to general
   prompts. A rise is how far the tuned model moved away from the base model's answers.
3. Optionally, perplexity on a general text data set the user names.

Base and tuned results are per item, so every difference gets a paired bootstrap interval, and
the base model probed again at another batch size gives the noise floor that a change must
exceed (`noise.py`).
"""

from __future__ import annotations

import json
import math
from importlib import resources

import torch
import torch.nn.functional as F

from tunesmith.data.chat import IGNORE, encode_chat, encode_example
from tunesmith.data.collate import collate_tokens
from tunesmith.data.reasoning import answer_of
from tunesmith.data.records import load_examples
from tunesmith.eval.bootstrap import bootstrap_ci, paired_bootstrap_ci
from tunesmith.eval.generate import BATCH_SIZE, Sampling, generate_all
from tunesmith.eval.metrics import contains_answer
from tunesmith.forgetting import noise
from tunesmith.forgetting.reference import BaseReference, data_version

QA_MAX_NEW_TOKENS = 24  # the answer comes in the first sentence
REPLY_MAX_NEW_TOKENS = 64
MAX_LENGTH = 512


def general_qa() -> list[dict]:
    text = resources.files("tunesmith.forgetting").joinpath("general_qa.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def general_prompts() -> tuple[list[str], list[str]]:
    """(probe prompts, replay prompts): disjoint, so replay never trains on what drift measures."""
    text = resources.files("tunesmith.forgetting").joinpath("general_prompts.txt").read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    return prompts[::3], [p for i, p in enumerate(prompts) if i % 3]


def _user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def base_replies(base: BaseReference, prompts: list[str], batch_size: int = BATCH_SIZE) -> list[str]:
    """The base model's greedy replies to `prompts`, cached."""
    return base.cached(
        "replies",
        [prompts, REPLY_MAX_NEW_TOKENS],
        lambda m, t: generate_all(
            m, t, [_user(p) for p in prompts], Sampling(max_new_tokens=REPLY_MAX_NEW_TOKENS), batch_size
        ),
    )


def qa_answers(model, tokenizer, items: list[dict], batch_size: int = BATCH_SIZE) -> list[str]:
    return generate_all(
        model, tokenizer, [_user(q["question"]) for q in items], Sampling(max_new_tokens=QA_MAX_NEW_TOKENS), batch_size
    )


def sequence_nll(model, tokenizer, features: list[dict], batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL, token count) over each feature's labelled tokens, without gradients."""
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            batch = collate_tokens(features[start : start + batch_size], tokenizer.pad_token_id)
            mask = batch["attention_mask"]
            assert mask is not None  # padded, not packed
            logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=mask.to(dev)).logits
            labels = batch["labels"][:, 1:].to(dev)
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            counts = (labels != IGNORE).sum(1)
            out += [(float(s), int(c)) for s, c in zip(nll.sum(1), counts)]
    return out


def reply_features(tokenizer, prompts: list[str], replies: list[str]) -> list[dict]:
    """The reply's own tokens as labels; the end-of-turn token is left out, since a reply cut at
    the generation limit has none."""
    feats = []
    for p, r in zip(prompts, replies):
        enc = encode_chat(tokenizer, _user(p) + [{"role": "assistant", "content": r}], MAX_LENGTH, "all_assistant")
        labels = list(enc.labels)
        last = max(i for i, x in enumerate(labels) if x != IGNORE)
        if enc.input_ids[last] == tokenizer.eos_token_id:
            labels[last] = IGNORE
        feats.append({"input_ids": enc.input_ids, "labels": labels})
    return feats


def text_features(tokenizer, path: str, limit: int) -> list[dict]:
    examples = load_examples(path)[:limit]
    feats = [encode_example(tokenizer, e, MAX_LENGTH, "all") for e in examples]
    return [{"input_ids": f.input_ids, "labels": f.labels} for f in feats]


def probe_sets(limit: int | None = None) -> tuple[list[dict], list[str]]:
    """The general QA items and drift prompts a probe uses: all (239 and 50), or the first `limit`
    questions and a third as many prompts, for a quicker, less precise probe."""
    items, prompts = general_qa(), general_prompts()[0]
    if limit is None:
        return items, prompts
    return items[:limit], prompts[: max(1, math.ceil(limit / 3))]


def probe(
    model,
    tokenizer,
    base: BaseReference,
    *,
    text: str | None = None,
    text_limit: int = 200,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
) -> dict:
    """Per-item results of one model: QA correctness, drift NLL per prompt, text NLL per document."""
    items, probe_prompts = probe_sets(limit)
    replies = base_replies(base, probe_prompts, batch_size)
    answers = qa_answers(model, tokenizer, items, batch_size)
    drift = sequence_nll(model, tokenizer, reply_features(tokenizer, probe_prompts, replies))
    out = {
        "qa": [
            {"question": q["question"], "answer": a, "correct": contains_answer(answer_of(a), q["answers"])}
            for q, a in zip(items, answers)
        ],
        "drift": [{"prompt": p, "nll": s / max(1, c), "tokens": c} for p, (s, c) in zip(probe_prompts, drift)],
    }
    if text:
        out["text"] = [
            {"nll": s, "tokens": c}
            for s, c in sequence_nll(model, tokenizer, text_features(tokenizer, text, text_limit))
        ]
    return out


def base_probe(
    base: BaseReference,
    *,
    text: str | None = None,
    text_limit: int = 200,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
) -> dict:
    """The base model's own probe results, cached like its replies."""
    items, prompts = probe_sets(limit)
    return base.cached(
        "probe",
        [items, prompts, text, data_version(text), text_limit, QA_MAX_NEW_TOKENS, REPLY_MAX_NEW_TOKENS],
        lambda m, t: probe(m, t, base, text=text, text_limit=text_limit, batch_size=batch_size, limit=limit),
    )


def base_floor(
    base: BaseReference, base_items: dict, *, batch_size: int = BATCH_SIZE, limit: int | None = None, **_
) -> dict:
    """The probe's noise floor: the base model probed again at another batch size, against its
    probe at the run's (`base_items`, `noise.floor`); cached like the base probe."""
    other = noise.other_batch_size(batch_size)
    items, prompts = probe_sets(limit)
    again = base.cached(
        "probe-again",
        [items, prompts, other, QA_MAX_NEW_TOKENS, REPLY_MAX_NEW_TOKENS],
        lambda m, t: probe(m, t, base, batch_size=other, limit=limit),
    )
    return noise.floor(base_items, again, (batch_size, other))


def summarize(base: dict, tuned: dict, floor: dict | None = None) -> dict:
    """Base vs tuned with bootstrap intervals, and with the noise floor the verdict on the QA
    change. Retention: the share of the questions the base model answered that the tuned model
    still answers (None if the base answered none)."""
    b_qa, t_qa = [x["correct"] for x in base["qa"]], [x["correct"] for x in tuned["qa"]]
    b_nll, t_nll = [x["nll"] for x in base["drift"]], [x["nll"] for x in tuned["drift"]]
    qa_base, qa_tuned = bootstrap_ci(b_qa), bootstrap_ci(t_qa)
    change = paired_bootstrap_ci(b_qa, t_qa)
    out = {
        "qa": {
            "base": qa_base,
            "tuned": qa_tuned,
            "change": change,
            "retention": sum(b and t for b, t in zip(b_qa, t_qa)) / sum(b_qa) if sum(b_qa) else None,
            "gained": sum(t and not b for b, t in zip(b_qa, t_qa)),
            "lost": sum(b and not t for b, t in zip(b_qa, t_qa)),
        },
        "drift": {
            "base_nll": bootstrap_ci(b_nll),
            "tuned_nll": bootstrap_ci(t_nll),
            "increase": paired_bootstrap_ci(b_nll, t_nll),
        },
    }
    if floor is not None:
        out["floor"] = floor
        out["qa"]["verdict"] = noise.verdict(change, floor["qa"])
    if "text" in base and "text" in tuned:

        def ppl(rows):
            return math.exp(sum(r["nll"] for r in rows) / max(1, sum(r["tokens"] for r in rows)))

        def per_token(rows):
            return [r["nll"] / max(1, r["tokens"]) for r in rows]

        out["text"] = {
            "base_perplexity": ppl(base["text"]),
            "tuned_perplexity": ppl(tuned["text"]),
            "nll_increase": paired_bootstrap_ci(per_token(base["text"]), per_token(tuned["text"])),
            "documents": len(base["text"]),
        }
    return out
