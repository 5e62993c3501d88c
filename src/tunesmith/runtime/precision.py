"""Precision: fp32 or bf16 autocast over fp32 master weights; `auto` picks bf16 where it is fast."""

from __future__ import annotations

import contextlib

import torch


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bf16_is_fast(dev: torch.device) -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with native bf16 instructions.

    On a CPU, PyTorch's own kernel choice counts too: with ATen limited to AVX2 kernels
    (`ATEN_CPU_CAPABILITY=avx2`, as on a CPU without AVX-512) bf16 is emulated and slow, so `auto`
    runs fp32, exactly as it does on such a CPU.
    """
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if not torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX")):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None)]
    return any(check() for check in checks if check is not None)


def resolve_precision(name: str, dev: torch.device) -> str:
    if name == "auto":
        return "bf16" if bf16_is_fast(dev) else "fp32"
    return name


def inference_dtype(precision: str) -> torch.dtype:
    """The dtype a model is loaded in to generate or score: bf16 where `precision` resolves to it
    on this machine's device, fp32 otherwise."""
    return torch.bfloat16 if resolve_precision(precision, device()) == "bf16" else torch.float32


def autocast(precision: str, dev: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hold_frozen_weights_in_bf16(model) -> int:
    """Store the frozen weights of linear layers in bf16 for a bf16 run; returns how many.

    Under autocast a fp32 weight is cast to bf16 on every forward call, and a frozen one (an
    adapter's base) is not cached between calls: storing the cast once gives the same matmul
    inputs bit for bit, saves the casts, and halves the base's memory. Embeddings and the output
    head they may share stay fp32, so the residual stream keeps its fp32 precision; trainable
    weights stay fp32 master copies; so do DoRA's bases, whose weight norm is computed from them.
    PEFT layers stop copying their input to their fp32 weights' dtype: autocast casts it for the
    matmul anyway (two copies of every adapter input saved per step).
    """
    skip = {
        id(p)
        for m in (model.get_input_embeddings(), model.get_output_embeddings())
        if m is not None
        for p in m.parameters()
    }
    dora = [m for m in model.modules() if any(getattr(m, "use_dora", {}).values())]
    skip |= {id(m.base_layer.weight) for m in dora}
    cast = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            if not w.requires_grad and w.dtype == torch.float32 and id(w) not in skip:
                w.data = w.data.to(torch.bfloat16)
                cast += 1
        if hasattr(module, "cast_input_dtype_enabled") and module not in dora:
            module.cast_input_dtype_enabled = False  # a PEFT layer: autocast casts for its matmuls, no fp32 copy first
    return cast
