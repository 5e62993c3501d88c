"""LoRA's update added inside one matmul while training: base + scaling * (A x) B^T as one addmm.

PEFT's LoRA layer computes lora_B(lora_A(x)), multiplies it by the scaling and adds it to the base
layer's output: three passes over a [tokens x out features] tensor, where the rank-16 matmul that
writes it is itself memory-bound. `torch.addmm(result, A x, B^T, alpha=scaling)` writes the sum
once, and its backward multiplies by the scaling on the rank-16 side. On the bundled model a
packed LoRA step is about 6% faster (bench/README.md); the sum is rounded once instead of three
times, and the result is otherwise the same (tested against PEFT's forward, values and gradients).

Under autocast, layers that read the same fp32 input (q, k and v; gate and up) share one cast of it
to the compute dtype: autocast would cast it again for every base matmul and every lora_A, and each
lora_A keeps its copy for the backward pass (on the bundled model, 99 MiB of a 1024-token pass's
~1 GB of saved activations, and 8 of every 10 casts). Each reader still gets its own node in the
graph whose backward is the cast's (`grad.to(fp32)`), so the gradients are summed in fp32 exactly
as before (tested bit for bit). Without gradients (replies sampled while training runs) the
layers read the shared cast directly: at a decode step's 16 rows the two reader nodes took about
a sixth of a 576 x 1536 layer's time.

Only plain LoRA layers with one active, unmerged adapter take this path, and only while training
runs (`use_fused_lora` ... `restore_lora`); every other case (DoRA and other variants, a LoRA bias,
mixed adapter batches, disabled or merged adapters, quantized bases) goes to PEFT's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch

_last_cast: list = []  # [input, its version, its cast]: the one input whose cast layers may share


class _SharedCast(torch.autograd.Function):
    """`cast` (x in a lower dtype) as a reader of x: the backward of autocast's own cast."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
        ctx.dtype = x.dtype
        return cast  # an input returned as is: autograd gives each reader its own alias of it

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.to(ctx.dtype), None


def shared_cast(x: torch.Tensor) -> torch.Tensor | None:
    """x's cast to the autocast dtype, made once for every layer that reads this x; None where
    autocast would not cast it (no autocast, or x not fp32)."""
    kind = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(kind):
        return None
    low = torch.get_autocast_dtype(kind)
    if _last_cast and _last_cast[0] is x and _last_cast[1] == x._version and _last_cast[2].dtype == low:
        return _last_cast[2]
    with torch.no_grad():
        cast = x.to(low)
    _last_cast[:] = [x, x._version, cast]
    return cast


def _reader(x: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
    """One layer's view of the shared cast: a graph node of its own while gradients are taken, the
    cast itself otherwise (replies sampled while training runs: nothing to differentiate)."""
    return _SharedCast.apply(x, cast) if torch.is_grad_enabled() else cast


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
    dropout = self.lora_dropout[name]
    cast = shared_cast(x) if isinstance(dropout, torch.nn.Identity) else None
    if cast is not None:
        result = self.base_layer(_reader(x, cast))
        lora_a = self.lora_A[name](_reader(x, cast))
    else:
        result = self.base_layer(x)
        lora_a = self.lora_A[name](dropout(x))
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
    _last_cast.clear()
    for layer in layers:
        layer.__dict__.pop("forward", None)
