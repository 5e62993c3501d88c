"""OpenAI's graders as rewards of online RL: each scores a batch of replies, given the training
record (`item`) each answered. The spec is checked in config/graders.py; here it is computed.

  string_check     1 or 0: input eq / ne / like (contains) / ilike (contains, any case) reference
  text_similarity  0 to 1 (eval/text_similarity.py)
  python           grade(sample, item) in a sandbox, time- and memory-limited (runtime/sandbox.py)
  score_model      a model (local, or an OpenAI-compatible endpoint) answers with a number, clamped
                   to `range`; a reply with no number scores the range's low end
  multi            calculate_output over the named graders' scores

`sample` is {"output_text": the reply, "output_json": the reply parsed as JSON or None}. A reply a
grader cannot score (its python raised, timed out) scores 0 and is counted in `errors`; a python
grader that scores no reply of a batch ends the run with its error.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunesmith.config.graders import (
    TEMPLATE,
    Multi,
    PythonGrader,
    ScoreModel,
    StringCheck,
    TextSimilarity,
    check_formula,
)
from tunesmith.errors import UserError
from tunesmith.eval.text_similarity import similarity

if TYPE_CHECKING:
    import torch

    from tunesmith.config.graders import AnyGrader

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def sample_of(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return {"output_text": text, "output_json": parsed}


def _lookup(path: str, sample: dict[str, Any], item: dict[str, Any]) -> Any:
    root, *keys = path.split(".")
    value: Any = {"sample": sample, "item": item}[root]
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return ""
    return value


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """`{{sample.output_text}}`, `{{item.field}}`: values as text (JSON for lists and objects); a
    path the record lacks renders empty."""

    def value(match: re.Match[str]) -> str:
        found = _lookup(match.group(1), sample, item)
        return found if isinstance(found, str) else json.dumps(found)

    return TEMPLATE.sub(value, template)


class Grader:
    name: str
    errors: int = 0

    def __call__(self, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
        raise NotImplementedError


class StringCheckGrader(Grader):
    def __init__(self, spec: StringCheck) -> None:
        self.spec, self.name = spec, spec.name

    def one(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        a, b = render(self.spec.input, sample, item), render(self.spec.reference, sample, item)
        op = self.spec.operation
        return float(
            a == b if op == "eq" else a != b if op == "ne" else b in a if op == "like" else b.lower() in a.lower()
        )

    def __call__(self, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
        return [self.one(s, i) for s, i in zip(samples, items)]


class TextSimilarityGrader(Grader):
    def __init__(self, spec: TextSimilarity) -> None:
        self.spec, self.name = spec, spec.name

    def __call__(self, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
        return [
            similarity(self.spec.evaluation_metric, render(self.spec.input, s, i), render(self.spec.reference, s, i))
            for s, i in zip(samples, items)
        ]


class PythonCodeGrader(Grader):
    """The grader's code in a sandbox (`runtime/sandbox.py`; `rl.sandbox` picks which). A reply it
    cannot score scores 0 and is counted; a batch in which it scores no reply at all (its code
    broken, or denied what it reached for: a file, the network, a fork) ends the run naming it."""

    def __init__(self, spec: PythonGrader, isolation: str = "auto") -> None:
        from tunesmith.runtime.sandbox import PythonFunction, SandboxError

        self.name, self.errors = spec.name, 0
        try:
            self.function = PythonFunction(spec.source, spec.timeout_s, spec.memory_mb, isolation)
            self.function.start()  # a grader that does not load stops the run now, not reply by reply
        except SandboxError as e:
            raise UserError(f"grader {spec.name}: {e}") from None
        self.failure = SandboxError

    def __call__(self, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
        scores: list[float] = []
        failed, last = 0, None
        for sample, item in zip(samples, items):
            try:
                scores.append(self.function(sample, item))
            except self.failure as e:
                failed, last = failed + 1, e
                scores.append(0.0)
        self.errors += failed
        if scores and failed == len(scores):
            raise UserError(f"grader {self.name}: failed on every one of the {failed} replies of a batch ({last})")
        return scores


class ScoreModelGrader(Grader):
    def __init__(self, spec: ScoreModel, dtype: torch.dtype | None = None) -> None:
        self.spec, self.name = spec, spec.name
        params = spec.sampling_params
        self.max_tokens = params.max_completions_tokens if params and params.max_completions_tokens else 16
        self.temperature = params.temperature if params and params.temperature is not None else 0.0
        if spec.base_url:
            from tunesmith.eval.endpoint import ChatEndpoint

            self.endpoint: ChatEndpoint | None = ChatEndpoint(
                spec.base_url,
                spec.model,
                spec.api_key_env,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                options=("grader.model", "grader.api_key_env"),
            )
            self.local: tuple[Any, Any] | None = None
        else:
            from tunesmith.eval.generate import Sampling
            from tunesmith.model.load import load_for_inference

            self.endpoint = None
            self.local = (
                load_for_inference(spec.model, dtype=dtype) if dtype is not None else load_for_inference(spec.model)
            )
            self.sampling = Sampling(max_new_tokens=self.max_tokens)

    def score(self, reply: str) -> float:
        low, high = self.spec.range
        found = NUMBER.search(reply)
        if found is None:
            self.errors += 1
            return low
        return min(high, max(low, float(found.group(0))))

    def __call__(self, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
        conversations = [
            [{"role": m.role, "content": render(m.content, s, i)} for m in self.spec.input]
            for s, i in zip(samples, items)
        ]
        if self.endpoint is not None:
            replies = [self.endpoint.answer(c) for c in conversations]
        else:
            from tunesmith.eval.generate import generate_batch

            assert self.local is not None  # no endpoint: a local model
            model, tokenizer = self.local
            replies = generate_batch(model, tokenizer, conversations, self.sampling)
        return [self.score(r) for r in replies]


class MultiGrader(Grader):
    FUNCTIONS: dict[str, Callable[..., float]] = {
        "min": min,
        "max": max,
        "abs": abs,
        "sqrt": math.sqrt,
        "log": math.log,
        "exp": math.exp,
        "floor": math.floor,
        "ceil": math.ceil,
    }

    def __init__(self, spec: Multi, dtype: torch.dtype | None = None, isolation: str = "auto") -> None:
        self.name = spec.name
        self.parts = {name: build_grader(g, dtype, isolation) for name, g in spec.graders.items()}
        self.formula = check_formula(spec.calculate_output, set(spec.graders))

    def _evaluate(self, node: ast.AST, values: dict[str, float]) -> float:
        if isinstance(node, ast.Expression):
            return self._evaluate(node.body, values)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.UnaryOp):
            inner = self._evaluate(node.operand, values)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp):
            a, b = self._evaluate(node.left, values), self._evaluate(node.right, values)
            ops: dict[type[ast.operator], Callable[[], float]] = {
                ast.Add: lambda: a + b,
                ast.Sub: lambda: a - b,
                ast.Mult: lambda: a * b,
                ast.Div: lambda: a / b if b else 0.0,
                ast.Pow: lambda: a**b,
                ast.Mod: lambda: a % b if b else 0.0,
            }
            return float(ops[type(node.op)]())
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return float(self.FUNCTIONS[node.func.id](*(self._evaluate(arg, values) for arg in node.args)))
        raise ValueError(f"unexpected {type(node).__name__}")

    def __call__(self, samples: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[float]:
        scores = {name: g(samples, items) for name, g in self.parts.items()}
        self.errors = sum(g.errors for g in self.parts.values())
        out = []
        for k in range(len(samples)):
            try:
                value = self._evaluate(self.formula, {name: s[k] for name, s in scores.items()})
            except (ValueError, OverflowError, ZeroDivisionError):
                value = 0.0
            out.append(value if math.isfinite(value) else 0.0)
        return out


def build_grader(spec: AnyGrader, dtype: torch.dtype | None = None, isolation: str = "auto") -> Grader:
    """The grader a spec describes; `isolation`: where python graders' code runs (`rl.sandbox`)."""
    if isinstance(spec, ScoreModel):
        return ScoreModelGrader(spec, dtype)
    if isinstance(spec, Multi):
        return MultiGrader(spec, dtype, isolation)
    if isinstance(spec, PythonGrader):
        return PythonCodeGrader(spec, isolation)
    if isinstance(spec, StringCheck):
        return StringCheckGrader(spec)
    return TextSimilarityGrader(spec)
