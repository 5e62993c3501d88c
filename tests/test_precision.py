"""bf16 is safe: a frozen base held in bf16 computes exactly what autocast would, and bf16 runs
follow the fp32 loss curve within a stated tolerance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.run import train

# bf16 keeps 8 significant bits (~0.4% relative rounding per value). Over 20 steps of a tiny
# model the per-step training loss of a bf16 run stays within this relative distance of the
# same run in fp32 (measured: at most 0.16% for LoRA, 0.10% for full fine-tuning).
BF16_LOSS_RTOL = 0.01


def _lora_model(tiny_model_dir, dora=False):
    from tunesmith.config import AdapterConfig
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base

    torch.manual_seed(0)
    model = apply_adapter(load_base(tiny_model_dir), AdapterConfig(type="lora", r=8, alpha=16, dora=dora), None)
    for name, p in model.named_parameters():  # B starts at zero; make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("dora", [False, True])
def test_frozen_base_held_in_bf16_gives_autocasts_logits_exactly(tiny_model_dir, tokenizer, dora):
    from tunesmith.runtime.precision import hold_frozen_weights_in_bf16

    model = _lora_model(tiny_model_dir, dora)
    ids = torch.tensor([tokenizer("<|im_start|>user\nWhen is Anna's meeting in Paris?<|im_end|>")["input_ids"]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    cast = hold_frozen_weights_in_bf16(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits
    assert cast == (0 if dora else 2 * 7)  # q k v o gate up down in each of 2 layers; DoRA keeps fp32
    assert torch.equal(before, after)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "embed" in n or "norm" in n)
    base = torch.float32 if dora else torch.bfloat16
    assert all(d == base for n, d in dtypes.items() if n.endswith("base_layer.weight"))


def _in_mapped_files(model) -> list[str]:
    """Names of the model's tensors whose memory lies in a memory-mapped file (read from /proc)."""
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            spans.append([int(x, 16) for x in fields[0].split("-")])
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers())
    return [n for n, t in tensors if any(a <= t.untyped_storage().data_ptr() < b for a, b in spans)]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_a_bf16_adapter_run_lets_go_of_the_checkpoints_mapped_pages(tiny_model_dir, tokenizer):
    """After the frozen base is cast to bf16, nothing may keep the checkpoint's file mapping (and
    every fp32 page the cast read) alive: what stayed fp32 is copied out, values unchanged."""
    from tunesmith.engine.loop import ready_to_train

    model = _lora_model(tiny_model_dir)
    assert _in_mapped_files(model), "safetensors no longer maps the checkpoint: this test checks nothing"
    ids = torch.tensor([tokenizer("<|im_start|>user\nWhen is Anna's meeting in Paris?<|im_end|>")["input_ids"]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    ready_to_train(model, "bf16", torch.device("cpu"))
    assert _in_mapped_files(model) == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, before)
    emb = model.get_input_embeddings().weight
    assert emb.dtype == torch.float32 and emb is model.get_output_embeddings().weight  # still tied, still fp32


@pytest.mark.parametrize("adapter", [{"type": "lora", "r": 8, "alpha": 16}, {"type": "none"}])
def test_bf16_loss_curve_follows_fp32(tmp_path, tiny_model_dir, date_data, adapter):
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg_path = write_config(
            tmp_path / f"{precision}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / precision,
            adapter=adapter,
            train={"max_steps": 20, "precision": precision, "lr": 1e-2 if adapter["type"] == "lora" else 3e-3},
        )
        summary = train(load_config(cfg_path), quiet=True)
        assert summary["precision"] == precision
        curves[precision] = torch.tensor(
            [r["loss"] for r in read_jsonl(tmp_path / precision / "tiny" / "metrics.jsonl")]
        )
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert fp32[-1] < 0.6 * fp32[0]  # it learned: the comparison is over a real descent
    assert torch.isfinite(bf16).all()
    assert ((bf16 - fp32).abs() / fp32).max() < BF16_LOSS_RTOL, (fp32.tolist(), bf16.tolist())


def test_auto_precision_follows_the_kernels_pytorch_may_use():
    """`make test-avx2` limits PyTorch to AVX2 kernels: `auto` must then be fp32, as on a CPU
    without AVX-512, whatever this CPU has; and the provenance of results says so."""
    import json
    import os
    import subprocess
    import sys

    from tunesmith.provenance import KERNEL_LIMITS, machine

    env = {k: v for k, v in os.environ.items() if k not in KERNEL_LIMITS}
    code = (
        "import json; from tunesmith.provenance import machine, machine_tag; m = machine(); "
        "print(json.dumps([m['auto_precision'], m['torch_cpu_capability'], m['kernel_limits'], machine_tag(m)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "ATEN_CPU_CAPABILITY": "avx2"},
    ).stdout
    # on an AVX-512 CPU the limited kernels imitate the other kind: the tag says so
    tag = "avx2-fp32-emulated" if "avx512f" in machine()["cpu_flags"] else "avx2-fp32"
    assert json.loads(out) == ["fp32", "AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}, tag]


def test_results_from_a_gpu_are_tagged_by_the_gpu_not_the_cpu():
    from tunesmith.provenance import machine, machine_tag

    host = machine()
    assert machine_tag({**host, "gpu": "NVIDIA H100 80GB HBM3", "auto_precision": "bf16"}) == "cuda-h100-bf16"
    assert machine_tag({**host, "gpu": "NVIDIA H200", "auto_precision": "bf16"}) == "cuda-h200-bf16"
