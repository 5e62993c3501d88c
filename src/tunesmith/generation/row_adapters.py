"""A different adapter per row of one forward pass: LoRA and IA3 over one base.

PEFT applies the active adapter to every row (its `adapter_names` mixed batches cover LoRA only).
Here each LoRA and IA3 layer of a PeftModel gets a forward that, inside `per_row(model, names)`,
applies to each batch row the adapter named for it (None: the base alone): the base layer once
for all rows, then each adapter's low-rank update (or IA3 scale) on the rows that use it. A row
whose adapters are all one gets exactly PEFT's own computation; outside `per_row` the layers
behave as PEFT's do.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_state = threading.local()
_ORIGINAL = "_tunesmith_row_original"


def _groups() -> list[tuple[str | None, torch.Tensor | None]] | None:
    return getattr(_state, "groups", None)


def groups_of(names: list[str | None]) -> list[tuple[str | None, torch.Tensor | None]]:
    """Rows by adapter: (name, row indices), or one (name, None) when every row has the same."""
    if len(set(names)) == 1:
        return [(names[0], None)]
    rows: dict[str | None, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    return [(name, torch.tensor(index)) for name, index in rows.items()]


def _lora_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    groups = _groups()
    if groups is None:
        return getattr(layer, _ORIGINAL)(x, *args, **kwargs)
    if layer.merged:
        raise RuntimeError("per-row adapters need unmerged LoRA layers")
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    for name, rows in groups:
        if name is None or name not in layer.lora_A:
            continue
        sub = x if rows is None else x[rows]
        sub = layer._cast_input_dtype(sub, layer.lora_A[name].weight.dtype)
        if name in layer.lora_variant:  # DoRA and the like: the variant's own update on these rows
            part = layer.lora_variant[name].forward(
                layer, active_adapter=name, x=sub, result=result if rows is None else result[rows]
            )
            if rows is None:
                result = part
            else:
                result[rows] = part.to(dtype)
        else:
            delta = layer.lora_B[name](layer.lora_A[name](sub)) * layer.scaling[name]
            if rows is None:
                result = result + delta  # as PEFT computes it for one active adapter
            else:
                result[rows] = (result[rows] + delta).to(dtype)
    return result.to(dtype)


def _ia3_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    groups = _groups()
    if groups is None:
        return getattr(layer, _ORIGINAL)(x, *args, **kwargs)
    if layer.merged:
        raise RuntimeError("per-row adapters need unmerged IA3 layers")
    used = [(name, rows) for name, rows in groups if name is not None and name in layer.ia3_l]
    if not used:
        return layer.base_layer(x, *args, **kwargs)
    if len(groups) == 1:
        scale = layer.ia3_l[used[0][0]].flatten()
    else:  # one scale vector per row: the adapter's, or ones
        width = layer.ia3_l[used[0][0]].numel()
        scale = torch.ones(x.shape[0], width, dtype=layer.ia3_l[used[0][0]].dtype, device=x.device)
        for name, rows in used:
            scale[rows] = layer.ia3_l[name].flatten()
        scale = scale.view(x.shape[0], *([1] * (x.dim() - 2)), width)
    if layer.is_feedforward:
        return layer.base_layer((x.to(scale.dtype) * scale).to(x.dtype), *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    return (result * scale).to(result.dtype)


def install(model) -> None:
    """Give every adapter layer of `model` its per-row forward (once per layer; looked for again
    only when the set of adapters changed, which may add layers)."""
    adapters = tuple(sorted(getattr(model, "peft_config", {}) or {}))
    if getattr(model, "_tunesmith_row_adapters", None) == adapters:
        return
    from peft.tuners.ia3.layer import Linear as IA3Linear
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or hasattr(module, _ORIGINAL):
            continue
        if isinstance(module, LoraLinear):
            forward = _lora_forward
        elif isinstance(module, IA3Linear):
            forward = _ia3_forward
        else:
            raise ValueError(
                f"{name}: a {type(module).__name__} adapter layer cannot be applied per row "
                "(LoRA and IA3 on linear layers can)"
            )
        setattr(module, _ORIGINAL, module.forward)
        module.forward = forward.__get__(module)
    model._tunesmith_row_adapters = adapters


@contextmanager
def per_row(model, names: list[str | None]):
    """Forward passes inside the block apply `names[i]` (a PEFT adapter name, or None for the base)
    to batch row i."""
    if getattr(model, "peft_config", None):  # (the active adapter must not apply to base rows either)
        install(model)
    _state.groups = groups_of(names)
    try:
        yield
    finally:
        _state.groups = None
