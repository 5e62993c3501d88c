"""Task evaluation: exact match of generated replies against reference answers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunesmith.data.layouts import Example
from tunesmith.data.records import load_examples
from tunesmith.errors import UserError
from tunesmith.eval.generate import Sampling, generate_all


def split_reference(example: Example) -> tuple[list[dict], str]:
    """The conversation up to the last assistant turn, and that turn as the reference answer."""
    if example.messages is None:
        raise UserError(f"{example.source}: plain text has no reference answer to score; use a chat or prompt/completion layout")
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return example.messages[:last], example.messages[last]["content"]


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().split()).strip(" .")


def exact_match(model, tokenizer, test_path: str | Path, *, limit: int | None = None, max_new_tokens: int = 64,
                batch_size: int = 16, predictions_path: Path | None = None, progress=None) -> dict:
    """Greedy replies to every test example, scored by exact match (and whitespace/case-normalised)."""
    examples = load_examples(test_path)[:limit]
    prompts, refs = zip(*(split_reference(e) for e in examples))
    t0 = time.perf_counter()
    preds = generate_all(model, tokenizer, list(prompts), Sampling(max_new_tokens=max_new_tokens), batch_size, progress)
    seconds = time.perf_counter() - t0
    exact = [p.strip() == r.strip() for p, r in zip(preds, refs)]
    normalized = [normalize(p) == normalize(r) for p, r in zip(preds, refs)]
    if predictions_path is not None:
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        with predictions_path.open("w", encoding="utf-8") as f:
            for e, p, r, ok in zip(examples, preds, refs, exact):
                f.write(json.dumps({"source": e.source, "prediction": p, "reference": r, "exact": ok}) + "\n")
    n = len(examples)
    return {
        "n": n,
        "exact_match": sum(exact) / n,
        "normalized_exact_match": sum(normalized) / n,
        "seconds": round(seconds, 2),
    }
