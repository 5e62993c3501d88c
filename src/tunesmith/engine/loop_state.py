"""Where a training run is: the loop's state, which a checkpoint stores so that a resumed run
continues exactly (the data position, the counts, the sums since the last log line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def add_sums(into: dict[str, float], more: dict[str, float]) -> None:
    """Metric sums added key by key (a key new to `into` starts at 0)."""
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


@dataclass
class StepTotals:
    """One optimizer step, summed over its passes and all ranks."""

    loss: float  # summed loss (divide by items for the mean)
    items: float  # a count, summed over ranks in fp64
    tokens: int
    metrics: dict[str, float]  # the method's metric sums
    grad_norm: float
    skipped: bool  # the loss or the gradients were not finite: the optimizer did not step


@dataclass
class Window:
    """Sums over the optimizer steps since the last log line."""

    loss: float = 0.0
    items: float = 0
    tokens: int = 0
    steps: int = 0
    grad_norm: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, totals: StepTotals) -> None:
        self.loss += totals.loss
        self.items += totals.items
        self.tokens += totals.tokens
        self.grad_norm += totals.grad_norm
        self.steps += 1
        add_sums(self.metrics, totals.metrics)


@dataclass
class LoopState:
    """The loop's position and counts. `epoch`/`batch` is the next batch to draw; `elapsed` the
    training seconds before this process (a resumed run's clock goes on); `early_stop` the
    early-stopping count (`watched_score.EarlyStop.state`) as of the last checkpoint."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    window: Window = field(default_factory=Window)
    skipped: int = 0  # steps not taken (loss or gradients not finite)
    early_stop: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> LoopState:
        """The state a checkpoint stored (keys absent from older checkpoints take their defaults)."""
        fields = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "window": Window(**saved.get("window", {}))})

    def record(self, batches_per_epoch: int, lr: float, window_s: float, elapsed_s: float) -> dict[str, Any]:
        """One metrics.jsonl line: means per item (token) over the window; tokens/s counts real tokens."""
        w = self.window
        record = {
            "step": self.step,
            "epoch": round(self.epoch + self.batch / max(1, batches_per_epoch), 4),
            "loss": w.loss / w.items if w.items else float("nan"),  # nan: every step of the window skipped
            "lr": lr,
            "grad_norm": w.grad_norm / w.steps if w.steps else float("nan"),
            "tokens_per_s": w.tokens / max(1e-9, window_s),
            "tokens": self.tokens,
            "elapsed_s": round(elapsed_s, 3),
        }
        record.update({k: v / max(1, w.items) for k, v in w.metrics.items()})
        if self.skipped:
            record["skipped_steps"] = self.skipped
        return record
