"""The starting model's predictions during training, for losses that anchor to it.

With an adapter the reference is free: the same model with its adapters switched off. For full
fine-tuning it is a frozen copy of the starting weights, made before the first step.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from tunesmith.methods.logprobs import sequence_logprobs, token_logprob_inputs, token_logprobs


class ReferenceModel:
    def __init__(self, model):
        self.uses_adapter = hasattr(model, "disable_adapter")
        self.frozen = None
        if not self.uses_adapter:
            self.frozen = copy.deepcopy(model).eval()
            self.frozen.requires_grad_(False)

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Reference logits at the batch's loss positions (the rows `token_logprob_inputs` gives)."""
        target = model if self.uses_adapter else self._frozen_on(batch)
        with torch.no_grad(), model.disable_adapter() if self.uses_adapter else nullcontext():
            head, rows, _ = token_logprob_inputs(target, batch)
            return (head(rows) if head is not None else rows).float()

    def sequence_logprobs(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probabilities of each row's labelled tokens (see `base.sequence_logprobs`)."""
        target = model if self.uses_adapter else self._frozen_on(batch)
        with torch.no_grad(), model.disable_adapter() if self.uses_adapter else nullcontext():
            return sequence_logprobs(target, batch)

    def token_logprobs(self, model, batch: dict) -> torch.Tensor:
        """Reference log-probability of each labelled token (see `base.token_logprobs`)."""
        target = model if self.uses_adapter else self._frozen_on(batch)
        with torch.no_grad(), model.disable_adapter() if self.uses_adapter else nullcontext():
            return token_logprobs(target, batch)[0]

    def _frozen_on(self, batch: dict):
        dev = batch["input_ids"].device
        if next(self.frozen.parameters()).device != dev:
            self.frozen.to(dev)
        return self.frozen
