"""Sampling replies while a LoRA run trains (GRPO's rollouts): the token draw and the decode pass.

    .venv/bin/python bench/sampling.py [--repeats 7] [--out FILE]

Two comparisons, each pair timed alternately in one process, medians of the repeats:
- one token drawn from a row's distribution over the bundled model's 49,152-token vocabulary
  (peaked logits): `torch.multinomial` against tunesmith's inverse-transform draw
  (`generation/sampling.py`'s `drawn`), per row;
- 16 replies of 48 tokens (4 prompts of 60-400 tokens, 4 samples each, as a GRPO group samples)
  from the bundled model with a rank-16 all-linear LoRA adapter, its frozen base in bf16 under bf16
  autocast as a bf16 run holds it, through the generation engine: PEFT's own LoRA forward against
  tunesmith's fused one (`model/fused_lora.py`, as a training run samples with it); the adapter's
  B starts nonzero (as after some training), and whether both gave the same tokens is recorded;
- decode attention (`generation/row_attention.py`): every row's cached keys gathered into one
  padded batch, each row attending over a view of its own slots, and the switch by the longest
  row's keys that tunesmith runs (`PER_ROW_FROM`); 16 replies of 48 tokens with the fused LoRA as
  above, for short prompts (20-40 tokens), prompts of one length (96, 192) and the long ones of
  60-400 (`--attention-repeats`, 3 by default: 12 decodes a repeat).
Writes bench/results/sampling-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine_tag, provenance

from tunesmith.generation import row_attention
from tunesmith.generation.batch import generate_tokens
from tunesmith.generation.sampling import RowSettings, drawn

VOCAB, ROWS, NEW_TOKENS = 49152, 16, 48
PROMPT_LENGTHS = (60, 120, 250, 400)
SHORT_PROMPT_LENGTHS = (20, 25, 30, 40)
UNIFORM_PROMPT_LENGTHS = (96, 192)
DECODING = {"gathered": 10**9, "row_by_row": 0, "switch": row_attention.PER_ROW_FROM}


def draw_us(repeats: int) -> dict:
    """Microseconds per drawn token (one row), multinomial and inverse transform."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(ROWS, VOCAB, generator=g) * 3, dim=-1)
    gen = torch.Generator().manual_seed(1)
    kinds = {
        "multinomial": lambda p: int(torch.multinomial(p, 1, generator=gen)),
        "inverse_transform": lambda p: drawn(p, gen),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(repeats + 2):
        for name, fn in kinds.items():
            t = time.perf_counter()
            for _ in range(20):
                for row in probs:
                    fn(row)
            if i >= 2:
                times[name].append((time.perf_counter() - t) / (20 * ROWS) * 1e6)
    us = {k: statistics.median(v) for k, v in times.items()}
    return {**{f"{k}_us": v for k, v in us.items()}, "ratio": us["multinomial"] / us["inverse_transform"]}


def lora_model():
    from tunesmith.config.schema import AdapterConfig
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base
    from tunesmith.model.resolve import resolve
    from tunesmith.runtime.precision import hold_frozen_weights_in_bf16

    model = load_base(resolve("smollm2-135m-instruct").path)
    model = apply_adapter(model, AdapterConfig(type="lora", r=16, alpha=32, dropout=0.0, targets="all-linear"))
    hold_frozen_weights_in_bf16(model)
    g = torch.Generator().manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.02  # a trained adapter's update is not zero
    return model.eval()


def decode_s(repeats: int) -> dict:
    """Seconds for the 16 replies, with PEFT's LoRA forward and with the fused one."""
    from tunesmith.model.fused_lora import restore_lora, use_fused_lora

    model = lora_model()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, VOCAB - 100, (n,), generator=g).tolist() for n in PROMPT_LENGTHS for _ in range(4)]

    def sample() -> list[list[int]]:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            return generate_tokens(model, prompts, NEW_TOKENS, RowSettings(temperature=1.0, seed=1), frozenset(), ROWS)

    times: dict[str, list[float]] = {"peft": [], "fused": []}
    tokens = {}
    for i in range(repeats + 1):
        for name in times:
            layers = use_fused_lora(model) if name == "fused" else []
            t = time.perf_counter()
            tokens[name] = sample()
            if i >= 1:
                times[name].append(time.perf_counter() - t)
            restore_lora(layers)
    s = {k: statistics.median(v) for k, v in times.items()}
    generated = sum(len(r) for r in tokens["fused"])
    return {
        **{f"{k}_s": v for k, v in s.items()},
        **{f"{k}_tokens_per_s": generated / v for k, v in s.items()},
        "ratio": s["peft"] / s["fused"],
        "same_tokens": tokens["peft"] == tokens["fused"],
    }


def decode_attention_s(repeats: int) -> dict:
    """Seconds for the 16 replies with the fused LoRA, for prompts short, of one length and long,
    decoding with keys gathered, row by row, and switching by the longest row's keys."""
    from tunesmith.model.fused_lora import use_fused_lora

    model = lora_model()
    use_fused_lora(model)
    g = torch.Generator().manual_seed(0)
    result = {}
    cases = {
        "short": [n for n in SHORT_PROMPT_LENGTHS for _ in range(4)],
        **{f"all {n}": [n] * ROWS for n in UNIFORM_PROMPT_LENGTHS},
        "long": [n for n in PROMPT_LENGTHS for _ in range(4)],
    }
    for case, lengths in cases.items():
        prompts = [torch.randint(100, VOCAB - 100, (n,), generator=g).tolist() for n in lengths]
        times: dict[str, list[float]] = {k: [] for k in DECODING}
        tokens = {}
        for i in range(repeats + 1):
            for name, threshold in DECODING.items():
                row_attention.PER_ROW_FROM = threshold
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
                    tokens[name] = generate_tokens(
                        model, prompts, NEW_TOKENS, RowSettings(temperature=1.0, seed=1), frozenset(), ROWS
                    )
                if i >= 1:
                    times[name].append(time.perf_counter() - t)
        row_attention.PER_ROW_FROM = DECODING["switch"]
        s = {k: statistics.median(v) for k, v in times.items()}
        result[case] = {
            "prompt_lengths": sorted(set(lengths)),
            **{f"{k}_s": v for k, v in s.items()},
            "switch_vs_gathered": s["gathered"] / s["switch"],
            "same_tokens": {k: tokens[k] == tokens["gathered"] for k in ("row_by_row", "switch")},
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--attention-repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    where = provenance()
    result = {
        "machine": where["machine"],
        "provenance": where,
        "repeats": args.repeats,
        "rows": ROWS,
        "new_tokens": NEW_TOKENS,
        "prompt_lengths": PROMPT_LENGTHS,
        "per_row_from": DECODING["switch"],
        "draw": draw_us(args.repeats),
        "decode": decode_s(args.repeats),
        "attention_repeats": args.attention_repeats,
        "decode_attention": decode_attention_s(args.attention_repeats),
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"sampling-{machine_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; `make results-table` puts it in bench/README.md")


if __name__ == "__main__":
    main()
