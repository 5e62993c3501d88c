"""A fine-tuning job as OpenAI's API takes it, and the tunesmith run it becomes.

`POST /v1/fine_tuning/jobs` is checked here (400 naming the parameter); its `"auto"`
hyperparameters are resolved once the training file is read, from the number of examples, the way
a careful user would choose them, and written back into the job:

  n_epochs                 3, raised for small files so training sees ~100 examples and lowered
                           for large ones to ~25,000 (OpenAI's published rule), at most 25
  batch_size               examples / 64, as a power of two between 1 and 8 (a CPU's sweet spot)
  learning_rate_multiplier 2; the learning rate is the multiplier x 5e-4 for supervised LoRA
                           (x 5e-5 for DPO): 1e-3 and 1e-4, the rates tunesmith's own examples use
  beta                     0.1 (DPO)
  compute_multiplier       1: GRPO samples 4 replies per prompt (times the multiplier)
  eval_interval            one epoch's steps (reinforcement: the reward on the validation prompts)

Reinforcement jobs are GRPO with the job's grader as the reward (methods/graders.py), each reply
up to 128 tokens.

Every job trains a LoRA (r 16, all linear layers) over the base, so the service serves any number
of fine-tunes over one copy of each base. The run checkpoints at the end of every epoch (the
checkpoints the API lists) and measures forgetting after training; the service's `--replay`
mixes that share of the base model's own answers to general prompts into every job's batches
(the mitigation docs/evaluation.md measures).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunesmith.config.graders import AnyGrader

METHOD_OF = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}  # OpenAI's method type -> tunesmith's
LR_UNIT = {"supervised": 5e-4, "dpo": 5e-5, "reinforcement": 1e-4}
GROUP_SIZE = 4  # replies sampled per prompt in reinforcement, times compute_multiplier
RL_MAX_NEW_TOKENS = 128
AUTO_LR_MULTIPLIER = 2.0
AUTO_BETA = 0.1
MIN_EXAMPLES = 10  # OpenAI refuses smaller training files
MAX_EPOCHS = 25


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Auto = Literal["auto"]


def within(low: float, high: float, *, above: bool = False):
    """A field validator: a number given (not "auto") lies in [low, high], or (low, high] with `above`."""

    def check(cls, v):
        if (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and not ((v > low if above else v >= low) and v <= high)
        ):
            raise ValueError(f"must be {'above' if above else 'at least'} {low:g} and at most {high:g}")
        return v

    return classmethod(check)


class Hyperparameters(Strict):
    n_epochs: Auto | int | None = None
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    beta: Auto | float | None = None  # dpo only

    _epochs = field_validator("n_epochs")(within(1, 50))
    _batch = field_validator("batch_size")(within(1, 256))
    _lr = field_validator("learning_rate_multiplier")(within(0, 50, above=True))
    _beta = field_validator("beta")(within(0, 2, above=True))


class MethodSettings(Strict):
    hyperparameters: Hyperparameters = Hyperparameters()


class ReinforcementHyperparameters(Hyperparameters):
    compute_multiplier: Auto | float | None = None  # more replies sampled per prompt
    eval_interval: Auto | int | None = None  # steps between validation rounds
    eval_samples: Auto | int | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = (
        None  # no reasoning models here: kept, unused
    )

    _compute = field_validator("compute_multiplier")(within(0.5, 4))
    _positive = field_validator("eval_interval", "eval_samples")(within(1, 10**6))


class ReinforcementSettings(Strict):
    grader: AnyGrader
    hyperparameters: ReinforcementHyperparameters = ReinforcementHyperparameters()
    response_format: dict | None = None


class Method(Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodSettings | None = None
    dpo: MethodSettings | None = None
    reinforcement: ReinforcementSettings | None = None

    @field_validator("reinforcement")
    @classmethod
    def _format(cls, v):
        if v is not None and v.response_format is not None:
            raise ValueError("response_format (structured outputs) is not supported by this server")
        return v


class JobRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None  # the older place for supervised settings
    method: Method | None = None
    integrations: list | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 16 keys, each up to 64 characters, values up to 512")
        return v

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, v):
        if v:
            raise ValueError("integrations (Weights & Biases) are not supported by this server")
        return v

    def method_type(self) -> str:
        return self.method.type if self.method is not None else "supervised"

    def given(self) -> Hyperparameters:
        """The hyperparameters asked for, wherever the request put them."""
        kind = self.method_type()
        settings = getattr(self.method, kind, None) if self.method is not None else None
        if settings is not None:
            return settings.hyperparameters
        return self.hyperparameters or Hyperparameters()


def resolve(kind: str, given: Hyperparameters, n_examples: int) -> dict:
    """Every hyperparameter as a number: the ones given, the `auto` (or absent) ones chosen."""

    def pick(value, auto):
        return auto if value in (None, "auto") else value

    epochs = 3
    if n_examples * epochs < 100:
        epochs = min(MAX_EPOCHS, math.ceil(100 / n_examples))
    elif n_examples * epochs > 25_000:
        epochs = max(1, 25_000 // n_examples)
    batch = 1 << max(0, min(3, int(math.log2(max(1, n_examples // 64))))) if n_examples >= 64 else 1
    out: dict[str, Any] = {
        "n_epochs": int(pick(given.n_epochs, epochs)),
        "batch_size": int(pick(given.batch_size, batch)),
        "learning_rate_multiplier": float(pick(given.learning_rate_multiplier, AUTO_LR_MULTIPLIER)),
    }
    if kind == "dpo":
        out["beta"] = float(pick(given.beta, AUTO_BETA))
    if kind == "reinforcement":
        out["compute_multiplier"] = float(pick(getattr(given, "compute_multiplier", None), 1.0))
        out["eval_interval"] = int(
            pick(getattr(given, "eval_interval", None), steps_per_epoch(n_examples, out["batch_size"]))
        )
        out["eval_samples"] = int(pick(getattr(given, "eval_samples", None), 1))
        effort = getattr(given, "reasoning_effort", None)
        if effort is not None:
            out["reasoning_effort"] = effort
    return out


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def grader_models(grader: dict, bases: dict[str, str]) -> dict:
    """A grader spec whose local `score_model` graders name the server's base models (checked when
    the job was created) by their references, as the worker loads them."""
    if grader.get("type") == "multi":
        return {**grader, "graders": {k: grader_models(g, bases) for k, g in grader["graders"].items()}}
    if grader.get("type") == "score_model" and not grader.get("base_url") and grader.get("model") in bases:
        return {**grader, "model": bases[grader["model"]]}
    return grader


def run_config(
    job: dict,
    base_reference: str,
    train_path: str,
    val_path: str | None,
    n_examples: int,
    runs_dir: str,
    probe_limit: int,
    precision: str = "auto",
    replay: float = 0.0,
    bases: dict[str, str] | None = None,
) -> dict:
    """The tunesmith run (config tree) that trains `job`, its hyperparameters resolved."""
    kind = job["method"]["type"]
    hp = job["method"][kind]["hyperparameters"]
    per_epoch = steps_per_epoch(n_examples, hp["batch_size"])
    data_format = {"dpo": "openai_preference", "reinforcement": "openai_reinforcement"}.get(kind, "messages")
    tree = {
        "name": job["id"],
        "model": base_reference,
        "method": METHOD_OF[kind],
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
        "data": {"train": [{"path": train_path, "format": data_format}], "max_length": 1024},
        "train": {
            "epochs": hp["n_epochs"],
            "batch_size": hp["batch_size"],
            "lr": hp["learning_rate_multiplier"] * LR_UNIT[kind],
            "schedule": "linear",
            "warmup": 0.05,
            "seed": job["seed"],
            "log_every": 1,
            "precision": precision,
        },
        "eval": {"every": per_epoch},
        "forgetting": {
            "probe": probe_limit > 0,
            "probe_limit": max(3, probe_limit) if probe_limit else None,
            "replay": replay,
        },
        "output": {"dir": runs_dir, "save_every": per_epoch, "keep": 3},
    }
    if val_path is not None:
        tree["data"]["val"] = {"path": val_path, "format": data_format}
    if kind == "dpo":
        tree["preference"] = {"loss": "sigmoid", "beta": hp["beta"]}
    if kind == "reinforcement":
        tree["rl"] = {
            "rewards": [{"grader": grader_models(job["method"]["reinforcement"]["grader"], bases or {})}],
            "sandbox": "bubblewrap",  # a tenant's code never runs outside the sandbox
            "group_size": max(2, round(GROUP_SIZE * hp["compute_multiplier"])),
            "max_new_tokens": RL_MAX_NEW_TOKENS,
        }
        tree["eval"] = {"every": hp["eval_interval"]}
    return tree
