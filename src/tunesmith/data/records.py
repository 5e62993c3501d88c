"""Every record of a source read and validated before any training starts.

`on_error: stop` (default) raises one UserError listing the problems, each `location: what is
wrong`, one per line; `on_error: skip` drops bad records and says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.layouts import Example, to_example
from tunesmith.data.sources import read_rows
from tunesmith.errors import UserError

MAX_LISTED = 20


@dataclass
class Loaded:
    examples: list[Example]
    problems: list[str] = field(default_factory=list)  # what was skipped, with locations
    unpreferred: int = 0  # labelled records that prefer neither response (judgement tie / both_bad)


def load_source(path: str, *, fmt: str = "auto", columns: dict[str, str] | None = None, key: str | None = None,
                split: str = "train", on_error: str = "stop") -> Loaded:
    problems: list[str] = []
    rows = read_rows(path, problems, key=key, split=split)
    examples, unpreferred = [], 0
    for row in rows:
        try:
            example = to_example(row.record, row.location, fmt, columns)
        except ValueError as e:
            problems.append(f"{row.location}: {e}")
            continue
        if example is None:
            unpreferred += 1
        else:
            examples.append(example)
    if problems and on_error == "stop":
        raise_problems(problems)
    if not examples:
        why = (f"{len(problems)} bad" if problems else "") + (f"{', ' if problems else ''}{unpreferred} judged tie or both bad"
                                                          if unpreferred else "")
        raise UserError(f"{path}: no valid records ({why})" if why else f"{path}: no records (empty file)")
    return Loaded(examples, problems, unpreferred)


def load_examples(path: str, **options) -> list[Example]:
    return load_source(str(path), **options).examples


def raise_problems(problems: list[str]) -> None:
    """One problem per line, the first MAX_LISTED of them, then how many more."""
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    tail = [f"... and {more} more problem{'s' if more > 1 else ''}"] if more else []
    raise UserError("\n".join(shown + tail))
