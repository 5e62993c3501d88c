"""The one face every method shows the run and the engine: `Method`.

The engine never asks which method it runs: it turns examples into features, features into
batches, and a batch into a summed loss. Each batch says how many items its loss sums over
(`batch["n_items"]`: loss tokens for SFT, pairs for preference losses), so the engine can
normalise over a whole gradient-accumulation window before the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch


class Method:
    """What a training method is, hook by hook in the order a run calls them. A new method
    subclasses this, implements `features`, `collate` and `loss`, overrides what else it needs,
    and is registered by one line in `config/methods.py`; `name` is the name it was built under
    (one class may serve several, as GroupPolicyOptimisation serves grpo and rloo).

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

    def __init__(self, config) -> None:
        self.name = config.method if config is not None else ""
        self.truncated = 0
        self.dropped = 0
        self.kl_anchor = None  # a ReferenceModel, set by the run when forgetting.kl > 0 or self_distill is on

    def features(self, example: Any, tokenizer) -> dict | None:
        """One example -> model-ready features, or None to drop it (e.g. nothing left to learn)."""
        raise NotImplementedError

    def collate(self, features: list[dict], tokenizer) -> dict:
        """Features -> a padded batch of tensors, with `n_items` set."""
        raise NotImplementedError

    def prepare(self, model, tokenizer, features: list[dict], run_dir, cfg, console) -> None:
        """Once, after the model is built and before the first step (a reference model, a teacher,
        reward functions); `features` are the training and validation features."""

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the batch's `n_items`, and metrics to log (sums, divided by the engine)."""
        raise NotImplementedError
