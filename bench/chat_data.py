"""A fixed set of variable-length chat examples for speed benchmarks, the same on every machine.

Each reply is a rule applied to its prompt (reverse a list, sort numbers, upper-case a sentence,
number the items), so the loss falls as a model learns rather than staying at word-salad level,
and lengths vary from a few dozen to several hundred tokens with a long tail, as real chat data
does. Written as prompt/completion message lists (what TRL trains completion-only by default) and
as preference pairs (the reply against a corrupted one) for DPO. Standard library only: both
benchmark environments import it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "apple river stone cloud maple silver garden window candle forest harbor pencil violet "
    "thunder meadow lantern copper saddle orchard pebble falcon marble willow ember glacier "
    "compass velvet tunnel blossom quartz ribbon canyon walnut beacon feather lagoon cobalt"
).split()


def _length(rng: random.Random) -> int:
    """Items in a prompt: mostly short, sometimes long (log-uniform from 3 to 80)."""
    return int(round(3 * ((80 / 3) ** rng.random())))


def _example(rng: random.Random) -> tuple[str, str, str]:
    """(prompt, reply, a plausible wrong reply)."""
    n = _length(rng)
    kind = rng.randrange(4)
    if kind == 0:
        items = [rng.choice(WORDS) for _ in range(n)]
        wrong = items[:]
        rng.shuffle(wrong)
        return f"Reverse this list of words: {' '.join(items)}", " ".join(reversed(items)), " ".join(wrong)
    if kind == 1:
        nums = [rng.randrange(1000) for _ in range(n)]
        return (
            f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}",
            ", ".join(map(str, sorted(nums))),
            ", ".join(map(str, sorted(nums, reverse=True))),
        )
    if kind == 2:
        sentence = " ".join(rng.choice(WORDS) for _ in range(n))
        return f"Write this in capital letters: {sentence}", sentence.upper(), sentence.title()
    items = [rng.choice(WORDS) for _ in range(n)]
    numbered = "\n".join(f"{i}. {w}" for i, w in enumerate(items, 1))
    return f"Number these items, one per line: {' '.join(items)}", numbered, "\n".join(f"- {w}" for w in items)


def write(out_dir: Path, n_train: int, n_heldout: int, seed: int = 0) -> dict[str, Path]:
    """sft.jsonl / heldout.jsonl (prompt/completion message lists) and dpo.jsonl (pairs)."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = [_example(rng) for _ in range(n_train + n_heldout)]
    paths = {name: out_dir / f"{name}.jsonl" for name in ("sft", "heldout", "dpo")}

    def chat(prompt, reply):
        return {
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": reply}],
        }

    with open(paths["sft"], "w") as sft, open(paths["dpo"], "w") as dpo:
        for prompt, reply, wrong in examples[:n_train]:
            sft.write(json.dumps(chat(prompt, reply)) + "\n")
            dpo.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": prompt}],
                        "chosen": [{"role": "assistant", "content": reply}],
                        "rejected": [{"role": "assistant", "content": wrong}],
                    }
                )
                + "\n"
            )
    with open(paths["heldout"], "w") as held:
        for prompt, reply, _ in examples[n_train:]:
            held.write(json.dumps(chat(prompt, reply)) + "\n")
    return paths
