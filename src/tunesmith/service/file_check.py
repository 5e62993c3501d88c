"""A job's files checked as OpenAI checks them before a job starts: every line read in the
format its method trains on, the first problems named by line; a file that fails fails the job
(`validating_files` -> `failed`) and nothing trains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.graders import TEMPLATE
from tunesmith.data.records import load_source
from tunesmith.errors import UserError
from tunesmith.service.job_spec import MIN_EXAMPLES

FORMAT_OF = {"supervised": "messages", "dpo": "openai_preference", "reinforcement": "openai_reinforcement"}
SHOWN = 3


@dataclass
class FileProblem(Exception):
    code: str
    message: str
    param: str


def item_fields(grader) -> set[str]:
    """The record fields a grader's templates read (`{{item.FIELD...}}`)."""
    if isinstance(grader, str):
        return {p.split(".")[1] for p in TEMPLATE.findall(grader) if p.startswith("item.")}
    if isinstance(grader, dict):
        return set().union(*(item_fields(v) for v in grader.values())) if grader else set()
    if isinstance(grader, list):
        return set().union(*(item_fields(v) for v in grader)) if grader else set()
    return set()


def check_file(path: Path, kind: str, label: str, param: str, grader: dict | None = None) -> int:
    """The number of examples in the file at `path` (called `label` in messages); FileProblem
    naming the line otherwise. With a grader: each record has the fields its templates read."""
    try:
        loaded = load_source(str(path), fmt=FORMAT_OF[kind], on_error="skip")
    except UserError as e:
        raise FileProblem(f"invalid_{param}", _relabel(str(e), path, label), param) from None
    needed = sorted(item_fields(grader)) if grader else []
    for example in loaded.examples:
        missing = [f for f in needed if f not in (example.item or {})]
        if missing:
            loaded.problems.append(f"{example.source}: the grader reads item.{missing[0]}, which this record lacks")
    if loaded.problems:
        more = len(loaded.problems) - SHOWN
        listed = "; ".join(_relabel(p, path, label) for p in loaded.problems[:SHOWN])
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise FileProblem(f"invalid_{param}", f"{listed}{tail}", param)
    n = len(loaded.examples)
    if param == "training_file" and n < MIN_EXAMPLES:
        raise FileProblem(
            "invalid_training_file",
            f"{label} has {n} example{'s' if n != 1 else ''}, but must have at least {MIN_EXAMPLES}",
            param,
        )
    return n


def _relabel(message: str, path: Path, label: str) -> str:
    """`/home/.../sha: ...` -> `train.jsonl (file-...) line 3: ...`: the name the user knows."""
    text = re.sub(re.escape(str(path)) + r":(\d+):", lambda m: f"{label} line {m.group(1)}:", message)
    return text.replace(str(path), label)
