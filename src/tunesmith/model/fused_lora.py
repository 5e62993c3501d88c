"""LoRA's update added inside one matmul while training: base + scaling * (A x) B^T as one addmm.

PEFT's LoRA layer computes lora_B(lora_A(x)), multiplies it by the scaling and adds it to the base
layer's output: three passes over a [tokens x out features] tensor, where the rank-16 matmul that
writes it is itself memory-bound. `torch.addmm(result, A x, B^T, alpha=scaling)` writes the sum
once, and its backward multiplies by the scaling on the rank-16 side. On the bundled model a
packed LoRA step is about 6% faster (bench/README.md); the sum is rounded once instead of three
times, and the result is otherwise the same (tested against PEFT's forward, values and gradients).

Only plain LoRA layers with one active, unmerged adapter take this path, and only while training
runs (`use_fused_lora` ... `restore_lora`); every other case (DoRA and other variants, a LoRA bias,
mixed adapter batches, disabled or merged adapters, quantized bases) goes to PEFT's own forward.
"""

from __future__ import annotations

import types

import torch


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or name not in self.lora_A
        or name in self.lora_variant
        or self.lora_B[name].bias is not None
    ):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    lora_a = self.lora_A[name](self.lora_dropout[name](x))
    weight_b = self.lora_B[name].weight
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        lora_a.reshape(-1, lora_a.shape[-1]),
        weight_b.t(),
        alpha=self.scaling[name],
    )
    return out.view(result.shape)


def use_fused_lora(model) -> list:
    """Give every plain PEFT LoRA linear layer of `model` the fused forward; returns them for
    `restore_lora`."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return []
    layers = [m for m in model.modules() if type(m) is Linear]  # not subclasses: quantized bases have their own
    for layer in layers:
        layer.forward = types.MethodType(_fused_forward, layer)  # type: ignore[method-assign]  # the point
    return layers


def restore_lora(layers: list) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)
