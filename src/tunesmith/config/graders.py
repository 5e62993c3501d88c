"""OpenAI's graders, as a reward of online RL (`rl.rewards: [{grader: {...}}]`) and as the
`grader` of a reinforcement fine-tuning job: the same JSON OpenAI's API takes, checked here.

Templates in `input`, `reference` and a score model's messages are `{{sample.output_text}}`,
`{{sample.output_json.KEY}}` (the reply parsed as JSON) and `{{item.FIELD}}` (a field of the
training record, dotted for nested ones). What each grader computes is in methods/graders.py.
"""

from __future__ import annotations

import ast
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")
SIMILARITY = ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
FORMULA_FUNCTIONS = ("min", "max", "abs", "sqrt", "log", "exp", "floor", "ceil")


class Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("grader", min_length=1, max_length=128)


def _templates(text: str) -> str:
    for path in TEMPLATE.findall(text):
        if not path.startswith(("sample.output_text", "sample.output_json", "item.")) or path.endswith("."):
            raise ValueError(
                f"{{{{{path}}}}}: a template names sample.output_text, sample.output_json.KEY or item.FIELD"
            )
    return text


class StringCheck(Grader):
    """1 when input and reference compare as `operation` says, else 0 (like: contains; ilike: ignoring case)."""

    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]
    _check = field_validator("input", "reference")(_templates)


class TextSimilarity(Grader):
    """How alike input and reference are, 0 to 1 (eval/text_similarity.py)."""

    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: str
    _check = field_validator("input", "reference")(_templates)

    @field_validator("evaluation_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in SIMILARITY:
            raise ValueError(
                f"{v!r} is not one this server computes ({', '.join(SIMILARITY)}); cosine and meteor "
                "need models it does not have"
            )
        return v


class PythonGrader(Grader):
    """`grade(sample, item) -> float` defined in `source`, run in a separate process with a time and memory limit."""

    type: Literal["python"]
    source: str = Field(min_length=1, max_length=256_000)
    image_tag: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=600)  # per reply (this server's addition)
    memory_mb: int = Field(512, ge=64, le=65536)

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, v: str) -> str:
        try:
            tree = ast.parse(v)
        except SyntaxError as e:
            raise ValueError(f"source does not parse as Python (line {e.lineno}: {e.msg})") from None
        if not any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body):
            raise ValueError("source must define grade(sample, item)")
        return v


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    max_completions_tokens: int | None = Field(None, ge=1, le=4096)
    reasoning_effort: str | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    type: Literal["message"] | None = None
    _check = field_validator("content")(_templates)


class ScoreModel(Grader):
    """A model reads the rendered messages and answers with a number, clamped to `range`: a local model
    reference, or the model of an OpenAI-compatible endpoint (`base_url`, key from `api_key_env`)."""

    type: Literal["score_model"]
    model: str = Field(min_length=1)
    input: list[InputMessage] = Field(min_length=1)
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: SamplingParams | None = None
    base_url: str | None = None  # this server's addition: where an endpoint model is
    api_key_env: str | None = None

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("range must be [low, high] with low < high")
        return v


class Multi(Grader):
    """Several graders, combined by the formula `calculate_output` over their names."""

    type: Literal["multi"]
    graders: dict[str, AnyGrader] = Field(min_length=1)
    calculate_output: str = Field(min_length=1, max_length=1000)

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, v: str, info: ValidationInfo) -> str:
        check_formula(v, set(info.data.get("graders") or {}))
        return v


AnyGrader = Annotated[StringCheck | TextSimilarity | PythonGrader | ScoreModel | Multi, Field(discriminator="type")]
Multi.model_rebuild()


class GraderSpec(BaseModel):
    """A wrapper to validate any grader from its JSON: GraderSpec(grader=...).grader."""

    model_config = ConfigDict(extra="forbid")
    grader: AnyGrader


def check_formula(formula: str, names: set[str]) -> ast.Expression:
    """The parsed formula: numbers, grader names, + - * / ** %, and min max abs sqrt log exp floor ceil."""
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"calculate_output {formula!r} is not a formula ({e.msg})") from None
    allowed = (
        ast.Expression,
        ast.BinOp,
        ast.UnaryOp,
        ast.Constant,
        ast.Name,
        ast.Load,
        ast.Call,
        ast.Add,
        ast.Sub,
        ast.Mult,
        ast.Div,
        ast.Pow,
        ast.Mod,
        ast.USub,
        ast.UAdd,
    )
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ValueError(
                f"calculate_output: {type(node).__name__} is not allowed (numbers, grader names, "
                f"+ - * / ** %, {', '.join(FORMULA_FUNCTIONS)})"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ValueError(f"calculate_output: {node.value!r} is not a number")
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in FORMULA_FUNCTIONS or node.keywords
        ):
            raise ValueError(f"calculate_output: only {', '.join(FORMULA_FUNCTIONS)} may be called")
        if isinstance(node, ast.Name) and node.id not in names and node.id not in FORMULA_FUNCTIONS:
            raise ValueError(
                f"calculate_output names {node.id!r}, which is not one of the graders ({', '.join(sorted(names))})"
            )
    return tree
