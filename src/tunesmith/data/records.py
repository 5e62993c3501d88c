"""Every record of a source read and validated before any training starts.

`on_error: stop` (default) raises one UserError listing the problems, each `location: what is
wrong`, one per line; `on_error: skip` drops bad records and says how many.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.layouts import Example, to_example
from tunesmith.data.peer_layouts import axolotl_converter, registry_source
from tunesmith.data.sources import read_rows
from tunesmith.errors import UserError

MAX_LISTED = 20
FIRST_PROBLEMS = 5  # shown when no record is valid


@dataclass
class Loaded:
    examples: list[Example]
    problems: list[str] = field(default_factory=list)  # what was skipped, with locations
    unpreferred: int = 0  # labelled records that prefer neither response (judgement tie / both_bad)
    ignored: Counter[str] = field(default_factory=Counter)  # key -> records whose layout left that key unread

    def ignored_note(self, path: str) -> str | None:
        """One line naming the keys that change a record's meaning but went unread, with counts."""
        if not self.ignored:
            return None
        layouts = ", ".join(sorted({e.layout for e in self.examples if e.ignored}))
        keys = ", ".join(f"'{k}' ({n})" for k, n in self.ignored.most_common())
        return (
            f"{path}: keys ignored by the {layouts} layout: {keys}; they would change what these records teach "
            "(name the layout with format:, or map the columns with columns:)"
        )


def load_source(
    path: str,
    *,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    key: str | None = None,
    split: str = "train",
    on_error: str = "stop",
    dataset: str | None = None,
    chat_template: dict[str, Any] | None = None,
) -> Loaded:
    """Every record of one source as Examples. `dataset`: the entry of a LLaMA-Factory registry
    at `path`; `chat_template`: Axolotl's options of that dataset type (`data/peer_layouts.py`)."""
    convert = None
    if dataset is not None:
        path, split, convert = registry_source(path, dataset)
    elif chat_template is not None:
        convert = axolotl_converter(**chat_template)
    problems: list[str] = []
    rows = read_rows(path, problems, key=key, split=split)
    examples: list[Example] = []
    unpreferred, ignored = 0, Counter[str]()
    for row in rows:
        try:
            record = convert(row.record) if convert is not None else row.record
            example = to_example(record, row.location, fmt, columns)
        except ValueError as e:
            problems.append(f"{row.location}: {e}")
            continue
        if example is None:
            unpreferred += 1
        else:
            examples.append(example)
            if example.ignored:
                ignored.update(example.ignored)
    if problems and on_error == "stop":
        raise_problems(problems)
    if not examples:
        if problems:
            no_valid(path, problems)
        why = f"{unpreferred} judged tie or both bad" if unpreferred else ""
        raise UserError(f"{path}: no valid records ({why})" if why else f"{path}: no records (empty file)")
    return Loaded(examples, problems, unpreferred, ignored)


def load_examples(path: str, **options: Any) -> list[Example]:
    return load_source(str(path), **options).examples


def no_valid(path: str, problems: list[str]) -> None:
    """No record is valid: say so, with the first problems and how many more there are."""
    shown = problems[:FIRST_PROBLEMS]
    more = len(problems) - len(shown)
    tail = [f"... and {more} more problem{'s' if more > 1 else ''}"] if more else []
    raise UserError("\n".join([f"{path}: no valid records ({len(problems)} with problems); the first:"] + shown + tail))


def raise_problems(problems: list[str]) -> None:
    """One problem per line, the first MAX_LISTED of them, then how many more."""
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    tail = [f"... and {more} more problem{'s' if more > 1 else ''}"] if more else []
    raise UserError("\n".join(shown + tail))
