"""The starting model's predictions during training, for losses that anchor to it.

With an adapter the reference is free: the same model with its adapters switched off. For full
fine-tuning it is a frozen copy of the starting weights, made before the first step.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.methods.logprobs import sequence_logprobs, takes_segments, token_logprob_inputs, token_logprobs
from tunesmith.model.peft_wrapping import adapter_off

if TYPE_CHECKING:
    from torch.nn import Module

    from tunesmith.data.batch import Batch


class ReferenceModel:
    def __init__(self, model: Module) -> None:
        self.uses_adapter = hasattr(model, "disable_adapter")
        self.frozen: Module | None = None
        if not self.uses_adapter:
            self.frozen = copy.deepcopy(model).eval()
            self.frozen.requires_grad_(False)

    def logits(self, model: Module, batch: Batch) -> torch.Tensor:
        """Reference logits at the batch's loss positions (the rows `token_logprob_inputs` gives)."""
        target, off = self._on(model, batch)
        with torch.no_grad(), off:
            head, rows, _ = token_logprob_inputs(target, batch)
            return (head(rows) if head is not None else rows).float()

    def sequence_logprobs(self, model: Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probabilities of each row's labelled tokens (see `base.sequence_logprobs`)."""
        target, off = self._on(model, batch)
        with torch.no_grad(), off:
            return sequence_logprobs(target, batch)

    def token_logprobs(self, model: Module, batch: Batch) -> torch.Tensor:
        """Reference log-probability of each labelled token (see `base.token_logprobs`)."""
        target, off = self._on(model, batch)
        with torch.no_grad(), off:
            return token_logprobs(target, batch)[0]

    def takes_segments(self, model: Module) -> bool:
        """Whether a batch's segments reach the reference's attention (see `logprobs.takes_segments`)."""
        return takes_segments(self.frozen if self.frozen is not None else model)

    def _on(self, model: Module, batch: Batch) -> tuple[Module, AbstractContextManager[Any]]:
        """What to run and within what: the model with its adapter switched off, or the frozen copy
        on the batch's device."""
        if self.frozen is None:
            return model, adapter_off(model)
        dev = batch["input_ids"].device
        if next(self.frozen.parameters()).device != dev:
            self.frozen.to(dev)
        return self.frozen, nullcontext()
