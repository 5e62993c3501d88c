"""Sequence-level distillation data: a teacher answers prompts, the answers become SFT data
(`tunesmith distill generate`).

The teacher is a local model (any model reference: greedy, batched) or an OpenAI-compatible
endpoint (`--teacher https://host/v1 --teacher-model NAME`, API key from an environment
variable; eval/endpoint.py): a frontier model, or another `tunesmith serve`. Requests are retried with exponential
backoff on rate limits, server errors and dropped connections, and paced to `--rpm` requests a
minute. Each answer is appended as one line ({"prompt", "completion", "teacher"}) and fsync'd as
it arrives, so an interrupted run loses nothing and a restart answers only the prompts the
output file does not have yet.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.prompts import append_durably, prompt_field, prompt_key, prompt_of, prompts_in


class LocalTeacher:
    """Greedy replies of a local model, batched."""

    def __init__(self, reference: str, max_tokens: int = 512, batch_size: int = 16):
        from tunesmith.eval.generate import Sampling
        from tunesmith.model.load import load_for_inference
        from tunesmith.runtime.precision import inference_dtype

        self.model, self.tokenizer = load_for_inference(reference, dtype=inference_dtype("auto"))
        self.sampling = Sampling(max_new_tokens=max_tokens)
        self.batch_size = batch_size
        self.name = reference

    def answer_many(self, conversations: list[list[dict]]) -> list[str]:
        from tunesmith.eval.generate import generate_batch

        return generate_batch(self.model, self.tokenizer, conversations, self.sampling)


def generate_replies(teacher, prompts_path: str | Path, out: Path, limit: int | None = None, progress=None) -> dict:
    """Answer every prompt not yet answered in `out`; returns counts."""
    from tunesmith.data.records import load_examples

    out = Path(out)
    prompts = [prompt_of(e) for e in load_examples(str(prompts_path))][:limit]
    done = prompts_in(out, "tunesmith distill generate")
    todo = [p for p in prompts if prompt_key(prompt_field(p)) not in done]
    skipped = len(prompts) - len(todo)
    step, empty = getattr(teacher, "batch_size", 1), 0
    for start in range(0, len(todo), step):
        chunk = todo[start : start + step]
        replies = teacher.answer_many(chunk) if hasattr(teacher, "answer_many") else [teacher.answer(chunk[0])]
        kept = [(p, r) for p, r in zip(chunk, replies) if r.strip()]
        empty += len(chunk) - len(kept)  # nothing to learn from; a restart asks again
        if kept:
            append_durably(
                out, [{"prompt": prompt_field(p), "completion": r, "teacher": teacher.name} for p, r in kept]
            )
        if progress is not None:
            progress(len(chunk))
    return {
        "prompts": len(prompts),
        "answered": len(todo) - empty,
        "empty_replies": empty,
        "already_answered": skipped,
        "out": str(out),
    }
