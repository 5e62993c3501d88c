"""The one face every method shows the run and the engine: `Method`, and the `Batch` it hands over.

The engine never asks which method it runs: it turns examples into features, features into
batches, lets the method generate what it trains on (`rollout`) and turns a batch into a summed
loss. Each batch says how many items its loss sums over (`n_items`: loss tokens for SFT, pairs
for preference losses, replies for online RL), so the engine can normalise over a whole
gradient-accumulation window before the backward pass, and how many real tokens it put through
the model (`n_tokens`), which the engine counts for tokens/s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from rich.console import Console
    from torch.nn import Module
    from transformers import PreTrainedTokenizerBase

    from tunesmith.config.schema import RunConfig
    from tunesmith.data.batch import Batch


class ReferenceLogits(Protocol):
    """The starting model's logits at a batch's loss positions (methods/reference.py's `ReferenceModel`)."""

    def logits(self, model: Module, batch: Batch) -> torch.Tensor: ...


@dataclass
class Setup:
    """What the run hands a method's `prepare`, once, before the first step."""

    model: Module
    tokenizer: PreTrainedTokenizerBase
    features: list[dict[str, Any]]  # the training and validation features
    run_dir: Path
    cfg: RunConfig
    console: Console


class Method(ABC):
    """What a training method is, hook by hook in the order a run calls them. A new method
    subclasses this, implements `features`, `collate` and `loss`, overrides what else it needs,
    and is registered by one line in `config/methods.py`; `name` is the name it was built under.

    Attributes the run reads: `head` ("causal": a language model; "score": a scalar head, as a
    reward model needs), `steps_per_batch` (optimizer steps on each batch: > 1 for PPO-style reuse
    of sampled replies), `logs_samples` (the method's loss appends one JSON-ready record per
    sampled sequence to `batch["samples"]`, which the engine writes with the step to the run's
    `samples.jsonl` on logged steps, cut back to the checkpoint on resume), and the counts
    `truncated` / `dropped` that `features` keeps of examples cut to `data.max_length` or left out.
    `kl_anchor` is set by the run when `forgetting.kl` > 0 or `forgetting.self_distill` is on: the
    starting model, whose distributions a method may anchor to (SFT does, on replay tokens and on its
    own replies to general prompts).
    """

    head: str = "causal"
    steps_per_batch: int = 1
    logs_samples: bool = False

    def __init__(self, config: RunConfig | None) -> None:
        self.name = config.method if config is not None else ""
        self.truncated = 0
        self.dropped = 0
        # a ReferenceModel, set by the run when forgetting.kl > 0 or self_distill is on
        self.kl_anchor: ReferenceLogits | None = None

    @classmethod
    def variant(cls, config: RunConfig) -> type[Method]:
        """The class that implements this registered name under `config`: itself, unless one name
        covers methods whose batches and losses differ (`dpo` with `preference.loss: kto`)."""
        return cls

    @abstractmethod
    def features(self, example: Any, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
        """One example -> model-ready features, or None to drop it (e.g. nothing left to learn)."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        """Features -> a padded batch of tensors, with `n_items` and `n_tokens` set."""

    def prepare(self, setup: Setup) -> None:  # noqa: B027 (optional)
        """Once, after the model is built and before the first step (a reference model, a teacher,
        reward functions)."""

    def rollout(self, model: Module, batch: Batch) -> None:  # noqa: B027 (optional: most methods train on their data)
        """Before the first `loss` on a batch (training and validation), on the device and in the
        training precision: what the method generates to train on, written into the batch (replies
        sampled from the model as it is now, their rewards; `n_tokens` then counts them). Not
        called again when the engine steps on the same batch again (`steps_per_batch` > 1)."""

    @abstractmethod
    def loss(self, model: Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the batch's `n_items`, and metrics to log (sums, divided by the engine)."""
