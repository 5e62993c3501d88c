"""`tunesmith data inspect`: what a data source will teach, before any training.

Detected layouts, record count, token lengths (terminal histogram and PNG), how many examples
`max_length` would cut, the first examples rendered with their trained tokens highlighted, and
every validation problem.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.text import Text

from tunesmith.data.chat import IGNORE, encode_example
from tunesmith.data.records import load_source
from tunesmith.report.plots import length_histogram

BUCKETS = 12


def masked_preview(tokenizer, ids: list[int], labels: list[int]) -> Text:
    """The rendered example; trained tokens in bold green, the rest dim."""
    text = Text()
    run: list[int] = []
    trained = None
    for tid, label in zip(ids, labels):
        now = label != IGNORE
        if trained is not None and now != trained:
            text.append(tokenizer.decode(run), style="bold green" if trained else "dim")
            run = []
        run.append(tid)
        trained = now
    if run:
        text.append(tokenizer.decode(run), style="bold green" if trained else "dim")
    return text


def histogram(lengths: list[int], console: Console, max_length: int) -> list[tuple[int, int, int]]:
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // BUCKETS))
    buckets = [(a, a + step - 1, sum(a <= n < a + step for n in lengths)) for a in range(lo, hi + 1, step)]
    top = max(c for _, _, c in buckets)
    for a, b, c in buckets:
        bar = "█" * max(1 if c else 0, round(30 * c / top))
        over = " > max_length" if a > max_length else ""
        console.print(f"  {a:>6}-{b:<6} {c:>6}  {bar}{over}", highlight=False)
    return buckets


def inspect(path: str, tokenizer, console: Console, *, fmt: str = "auto", columns=None, key=None, split="train",
            max_length: int = 1024, train_on: str = "all_assistant", show: int = 2, png: Path | None = None) -> dict:
    loaded = load_source(path, fmt=fmt, columns=columns, key=key, split=split, on_error="skip")
    examples = loaded.examples
    layouts = Counter(e.layout for e in examples)
    encoded = [encode_example(tokenizer, e, 10**9, train_on) for e in examples]
    lengths = [len(enc.input_ids) for enc in encoded]
    trained = [sum(label != IGNORE for label in enc.labels) for enc in encoded]
    over = sum(n > max_length for n in lengths)
    console.print(f"[bold]{path}[/bold]: {len(examples)} valid records, {len(loaded.problems)} with problems; "
                  f"layout: {', '.join(f'{k} ({v})' for k, v in layouts.items())}")
    console.print(f"tokens per example: min {min(lengths)}, mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; "
                  f"trained tokens: {sum(trained)} of {sum(lengths)} ({sum(trained) / max(1, sum(lengths)):.0%}); "
                  f"longer than max_length={max_length}: {over}")
    histogram(lengths, console, max_length)
    if png is not None:
        length_histogram(lengths, max_length, png, f"{Path(path).name}: tokens per example")
        console.print(f"histogram: {png}")
    for e, enc in list(zip(examples, encoded))[:show]:
        console.rule(f"{e.source} ({e.layout}; trained tokens in green)")
        console.print(masked_preview(tokenizer, enc.input_ids, enc.labels))
    for problem in loaded.problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    return {"records": len(examples), "problems": loaded.problems, "layouts": dict(layouts), "over_max_length": over,
            "min_tokens": min(lengths), "max_tokens": max(lengths), "trained_tokens": sum(trained)}
