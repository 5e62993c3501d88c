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


STYLES = {"answer": "bold green", "reasoning": "bold magenta", "shown": "dim", "shown reasoning": "dim magenta"}


def masked_preview(tokenizer, ids: list[int], labels: list[int], reasoning: list[bool] | None = None) -> Text:
    """The rendered example: trained answer tokens in bold green, trained reasoning in bold
    magenta (dim magenta where `train_on_reasoning: false` leaves it untrained), the rest dim."""
    text = Text()
    run: list[int] = []
    kind: str | None = None
    for k, (tid, label) in enumerate(zip(ids, labels)):
        thought = reasoning is not None and reasoning[k]
        now = ("reasoning" if thought else "answer") if label != IGNORE else ("shown reasoning" if thought else "shown")
        if kind is not None and now != kind:
            text.append(tokenizer.decode(run), style=STYLES[kind])
            run = []
        run.append(tid)
        kind = now
    if run and kind is not None:
        text.append(tokenizer.decode(run), style=STYLES[kind])
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


def inspect(
    path: str,
    tokenizer,
    console: Console,
    *,
    fmt: str = "auto",
    columns=None,
    key=None,
    split="train",
    dataset: str | None = None,
    chat_template: dict | None = None,
    max_length: int = 1024,
    train_on: str = "all_assistant",
    train_reasoning: bool = True,
    show: int = 2,
    png: Path | None = None,
) -> dict:
    loaded = load_source(
        path,
        fmt=fmt,
        columns=columns,
        key=key,
        split=split,
        on_error="skip",
        dataset=dataset,
        chat_template=chat_template,
    )
    examples = loaded.examples
    layouts = Counter(e.layout for e in examples)
    encoded = [encode_example(tokenizer, e, 10**9, train_on, train_reasoning) for e in examples]
    lengths = [len(enc.input_ids) for enc in encoded]
    trained = [sum(label != IGNORE for label in enc.labels) for enc in encoded]
    thinking = sum(sum(enc.reasoning) for enc in encoded if enc.reasoning is not None)
    with_reasoning = sum(enc.reasoning is not None for enc in encoded)
    undesirable = sum(e.desirable is False for e in examples)
    over = sum(n > max_length for n in lengths)
    console.print(
        f"[bold]{path}[/bold]{f' (dataset {dataset})' if dataset else ''}: {len(examples)} valid records, "
        f"{len(loaded.problems)} with problems; layout: {', '.join(f'{k} ({v})' for k, v in layouts.items())}"
    )
    console.print(
        f"tokens per example: min {min(lengths)}, mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; "
        f"trained tokens: {sum(trained)} of {sum(lengths)} ({sum(trained) / max(1, sum(lengths)):.0%}); "
        f"longer than max_length={max_length}: {over}"
    )
    if with_reasoning:
        console.print(
            f"reasoning: {with_reasoning} record{'s' if with_reasoning != 1 else ''}, {thinking} tokens, "
            f"{'trained' if train_reasoning else 'shown, not trained (train_on_reasoning: false)'}"
        )
    if undesirable:
        console.print(
            f"labels: {len(examples) - undesirable} desirable, {undesirable} undesirable (label: false): "
            "preference.loss kto learns from both; sft and distill train on the desirable ones only"
        )
    if (note := loaded.ignored_note(path)) is not None:
        console.print(f"[yellow]warning: {note}[/yellow]", highlight=False)
    histogram(lengths, console, max_length)
    if png is not None:
        length_histogram(lengths, max_length, png, f"{Path(path).name}: tokens per example")
        console.print(f"histogram: {png}")
    _show_records(examples[:show], encoded, tokenizer, console)
    for problem in loaded.problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    return {
        "records": len(examples),
        "problems": loaded.problems,
        "layouts": dict(layouts),
        "over_max_length": over,
        "min_tokens": min(lengths),
        "max_tokens": max(lengths),
        "trained_tokens": sum(trained),
        "trained_per_record": trained,
        "reasoning_records": with_reasoning,
        "reasoning_tokens": thinking,
        "undesirable": undesirable,
        "ignored": dict(loaded.ignored),
    }


def _show_records(examples: list, encoded: list, tokenizer, console: Console) -> None:
    """Each record as the model sees it, the trained tokens coloured."""
    for e, enc in zip(examples, encoded):
        legend = "trained answer in green, trained reasoning in magenta" if enc.reasoning else "trained tokens in green"
        console.rule(f"{e.source} ({e.layout}; {legend})")
        console.print(masked_preview(tokenizer, enc.input_ids, enc.labels, enc.reasoning))
