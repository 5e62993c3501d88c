"""The benchmark's FLOP count (bench/flops.py), held to what PyTorch's own counter sees run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from flops import Shape, example_flops  # noqa: E402


def test_forward_flops_equal_pytorchs_count_of_a_llama_forward():
    """One forward pass counted by torch.utils.flop_counter: the decoder's linear maps, attention
    over all L x L pairs (the eager kernel computes the masked half too) and the head at every
    position; the benchmark's count keeps the causal half and the head at loss positions only, so
    the full-square terms are rebuilt from its parts."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    length = 37
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 300, (1, length)))
    shape = Shape.of(config)
    parts = example_flops(shape, length, trained=length, full=False, lora_r=8)
    body_forward = parts["body"] // 4 * 2  # k = 4 for LoRA: forward is 2 of it
    head_forward = parts["head"] // 4 * 2
    attention_square = shape.layers * 4 * shape.heads * shape.head_dim * length * length
    assert counter.get_total_flops() == body_forward + head_forward + attention_square
    assert parts["attention"] == 3 * shape.layers * 4 * shape.heads * shape.head_dim * length * (length + 1) // 2
    assert parts["lora"] == 6 * 3 * 8 * sum(i + o for i, o in shape.linear_maps()) * length
