"""Weight anchoring (L2-SP): a pull of every trained weight back towards its starting value.

The penalty weight/2 * sum ||theta - theta_0||^2 (Li et al., 2018, "Explicit inductive bias for
transfer learning") is applied directly as its gradient, weight * (theta - theta_0), once per
optimizer step: no extra graph, no effect on the task loss that is logged.
"""

from __future__ import annotations

import torch


class WeightAnchor:
    def __init__(self, params: list[torch.Tensor], weight: float) -> None:
        self.params = params
        self.weight = weight
        self.start = [p.detach().clone() for p in params]  # fp32 copies of the starting weights

    def apply(self) -> float:
        """Add the anchor's gradient to every parameter's .grad; returns the penalty's value."""
        total = 0.0
        with torch.no_grad():
            for p, p0 in zip(self.params, self.start):
                if p0.device != p.device:
                    p0.data = p0.data.to(p.device)
                delta = p - p0
                total += float(delta.pow(2).sum())
                if p.grad is None:
                    p.grad = self.weight * delta
                else:
                    p.grad.add_(delta, alpha=self.weight)
        return self.weight / 2 * total
