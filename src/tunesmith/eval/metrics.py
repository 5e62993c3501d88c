"""Scores for one prediction against one reference. Pure functions: unit-tested by hand.

Each returns a float in [0, 1] (or None where it does not apply, e.g. JSON scores for a reference
that is not JSON), so a test set's score is the mean over the examples it applies to.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import Counter
from collections.abc import Callable

from tunesmith.errors import UserError

_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+|\d+")
_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS.update(
    {
        "thirty": "30",
        "forty": "40",
        "fifty": "50",
        "sixty": "60",
        "seventy": "70",
        "eighty": "80",
        "ninety": "90",
        "hundred": "100",
    }
)


def normalize(text: str) -> str:
    """Case and whitespace folded, trailing full stop dropped: 'The answer.' == 'the  answer'."""
    return " ".join(text.strip().lower().split()).strip(" .")


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def normalized_exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation or articles, number words as digits (SQuAD-style, plus
    numbers): '1,000' is 1000 and '149.5' stays one number rather than containing a 5."""
    found = _WORD.findall(text.lower())
    return [_NUMBER_WORDS.get(w, w.replace(",", "")) for w in found if w not in _ARTICLES]


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of word precision and recall (multiset overlap), as in SQuAD."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, answers: list[str]) -> float:
    """1 if any accepted answer appears as whole words in the prediction: tolerant to phrasing
    ('The capital of France is Paris.' answers 'Paris'; 'eight' answers '8')."""
    pred = f" {' '.join(words(prediction))} "
    return float(any(f" {' '.join(words(a))} " in pred for a in answers if words(a)))


def parse_json(text: str):
    """A JSON value from a reply, tolerating a ```json fence around it; None when it does not parse."""
    text = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def json_scores(prediction: str, reference: str) -> dict[str, float] | None:
    """For a JSON object reference: is the reply valid JSON, and the share of the reference's
    fields it reproduces exactly. None when the reference is not a JSON object."""
    ref = parse_json(reference)
    if not isinstance(ref, dict) or not ref:
        return None
    pred = parse_json(prediction)
    valid = isinstance(pred, dict)
    correct = sum(1 for k, v in ref.items() if valid and k in pred and pred[k] == v)
    return {"json_valid": float(pred is not None), "json_field_accuracy": correct / len(ref)}


def score(prediction: str, reference: str) -> dict[str, float]:
    """Every built-in metric that applies to this pair."""
    out = {
        "exact_match": exact_match(prediction, reference),
        "normalized_exact_match": normalized_exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
    }
    js = json_scores(prediction, reference)
    if js is not None:
        out.update(js)
    return out


UserMetric = Callable[[str, str], "float | dict[str, float]"]


def load_user_metric(spec: str, key: str = "eval.metric") -> tuple[str, UserMetric]:
    """`package.module:function` -> (name, function). A metric takes (prediction, reference) and
    returns a float or a dict of named floats; `key` names the config key in errors (reward
    functions load the same way)."""
    if spec.count(":") != 1:
        raise UserError(f"{key} {spec!r}: expected module:function, e.g. mypkg.metrics:rouge_l")
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{key} {spec!r}: cannot import {module_name}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"{key} {spec!r}: {module_name} has no function {func_name}")
    return func_name, func


def apply_user_metric(name: str, func: UserMetric, prediction: str, reference: str) -> dict[str, float]:
    value = func(prediction, reference)
    if isinstance(value, dict):
        return {f"{name}.{k}": float(v) for k, v in value.items()}
    if isinstance(value, (int, float, bool)):
        return {name: float(value)}
    raise UserError(f"eval.metric {name}: returned {type(value).__name__}; return a number or a dict of numbers")
