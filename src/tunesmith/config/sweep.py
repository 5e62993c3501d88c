"""The `sweep:` section of a run config: the search space of `tunesmith sweep` (dotted config keys
to distributions) and how trials are chosen, scored and pruned.

    sweep:
      train.lr: {log_uniform: [1.0e-5, 1.0e-3]}
      adapter.r: {choice: [8, 16, 32]}
      metric: val_loss        # what a trial is scored on (val_loss, or a val_<score> of eval.generate_every)
      sampler: tpe            # tpe | random
      pruner: median          # median | hyperband | none: stop trials that fall behind at an evaluation
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SweepParam(BaseModel):
    """One distribution; exactly one of the fields."""

    model_config = ConfigDict(extra="forbid")

    log_uniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int_uniform: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> SweepParam:
        given = [k for k in ("log_uniform", "uniform", "int_uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of log_uniform, uniform, int_uniform, choice")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: give at least one value")
        else:
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: [low, high] with low < high")
            if kind == "log_uniform" and lo <= 0:
                raise ValueError("log_uniform: both bounds above 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("log_uniform", "uniform", "int_uniform", "choice") if getattr(self, k) is not None)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, SweepParam] = Field(
        default_factory=dict,
        description="dotted config key -> distribution "
        "(written directly under sweep:, e.g. train.lr: {log_uniform: [1e-5, 1e-3]})",
    )
    metric: str = Field(
        "val_loss",
        pattern=r"^val_[A-Za-z0-9_]+$",
        description="the trial's score: val_loss, or a val_<score> of eval.generate_every",
    )
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _dotted_keys_are_params(cls, data: Any) -> Any:
        """Search dimensions are written as dotted keys beside the options."""
        if not isinstance(data, dict):
            return data
        params = dict(data.get("params") or {})
        rest = {}
        for key, value in data.items():
            if "." in key:
                params[key] = value
            elif key != "params":
                rest[key] = value
        return {**rest, "params": params}

    @model_validator(mode="after")
    def _not_its_own_keys(self) -> SweepConfig:
        for key in self.params:
            if key.split(".")[0] in ("name", "output", "sweep", "compare"):
                raise ValueError(f"{key}: set by the sweep itself, not searched")
        return self
