"""Collecting human preferences: two sampled replies per prompt, a person's judgement, one
preference record appended per judgement.

Every judgement is written with one `write` of whole lines, flushed and fsync'd before the page
hears it was saved, so a server that dies loses nothing already judged. Restarting on the same
output file skips the prompts judged there. What is written trains as it is (`method: dpo`,
`reward`), because ties and both-bad judgements without an edit carry `judgement` and no
preference (the data reader leaves them out):

  A or B                 {"prompt", "chosen": picked, "rejected": other, "judgement": "a"|"b"}
  A or B, edited         chosen is the person's edit of the picked reply ("original": the reply)
  tie / both_bad         {"prompt", "responses": [a, b], "judgement": ...}
  tie / both_bad, edited two records: the edit chosen over each reply
Each record also has "responses" (both replies as sampled), "edited", "model" and "time".
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.data.prompts import append_durably, prompt_field, prompt_key, prompt_of, prompts_in
from tunesmith.data.records import load_examples
from tunesmith.errors import UserError

CHOICES = ("a", "b", "tie", "both_bad")


def judged_prompts(path: Path) -> set[str]:
    """Keys of the prompts already judged in an output file (a resumed session skips them)."""
    return prompts_in(path, "tunesmith label")


@dataclass
class Pair:
    id: int
    prompt: list[dict]
    a: str
    b: str


class LabelSession:
    """The prompts, the model that answers them, and the output file; one pair on show at a time."""

    def __init__(
        self,
        model,
        tokenizer,
        prompts_path: str | Path,
        out: Path,
        model_name: str,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
    ):
        from tunesmith.eval.generate import Sampling

        self.model, self.tokenizer = model, tokenizer
        self.prompts = [prompt_of(e) for e in load_examples(str(prompts_path))]
        self.out = Path(out)
        self.model_name = model_name
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.seed = seed
        self.done = judged_prompts(self.out)
        self.current: Pair | None = None
        self.lock = threading.Lock()

    def progress(self) -> dict:
        judged = sum(prompt_key(prompt_field(p)) in self.done for p in self.prompts)
        return {"judged": judged, "total": len(self.prompts)}

    def next_pair(self) -> Pair | None:
        """The pair on show, or two fresh replies to the next prompt not yet judged."""
        from tunesmith.eval.generate import generate_batch

        with self.lock:
            if self.current is not None:
                return self.current
            for i, prompt in enumerate(self.prompts):
                if prompt_key(prompt_field(prompt)) not in self.done:
                    torch.manual_seed(self.seed + i)  # the same replies if the session restarts here
                    a, b = generate_batch(self.model, self.tokenizer, [prompt, prompt], self.sampling)
                    self.current = Pair(i, prompt, a, b)
                    return self.current
            return None

    def judge(self, pair_id: int, choice: str, edit: str | None = None) -> list[dict]:
        """Append the judgement of the pair on show; returns the records written."""
        if choice not in CHOICES:
            raise UserError(f"choice {choice!r}: one of {', '.join(CHOICES)}")
        edit = edit.strip() if edit and edit.strip() else None
        with self.lock:
            pair = self.current
            if pair is None or pair.id != pair_id:
                raise UserError(f"pair {pair_id} is not the one on show; reload the page")
            records = preference_records(pair, choice, edit)
            common = {
                "responses": [pair.a, pair.b],
                "edited": edit is not None,
                "model": self.model_name,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            records = [{**r, **common} for r in records]
            append_durably(self.out, records)
            self.done.add(prompt_key(prompt_field(pair.prompt)))
            self.current = None
            return records


def preference_records(pair: Pair, choice: str, edit: str | None) -> list[dict]:
    prompt = prompt_field(pair.prompt)
    if choice in ("a", "b"):
        picked, other = (pair.a, pair.b) if choice == "a" else (pair.b, pair.a)
        record = {"prompt": prompt, "chosen": edit or picked, "rejected": other, "judgement": choice}
        if edit is not None:
            record["original"] = picked
        return [record]
    if edit is None:
        return [{"prompt": prompt, "judgement": choice}]
    return [{"prompt": prompt, "chosen": edit, "rejected": reply, "judgement": choice} for reply in (pair.a, pair.b)]
