"""Message content as users' files carry it: a string, or a list of parts; and reasoning traces.

Content parts: OpenAI's `{"type": "text" | "input_text" | "output_text", "text"}`, LLaMA-Factory's
`{"type": "text", "value"}`; parts that carry images, audio, video or files are refused (text
models only). Reasoning on an assistant turn comes from a `reasoning_content` or `reasoning`
field, from parts of type `reasoning` / `thinking`, or from a `<think>…</think>` block that opens
the content; it is kept apart from the answer as the turn's `reasoning`.

A model whose chat template renders `reasoning_content` (Qwen 3 and similar) gets it that way;
any other template gets the documented default, the reasoning as a block before the answer:
`<think>\\n{reasoning}\\n</think>\\n\\n{answer}`. Generated replies are split back with
`split_reply`, so that scoring reads the answer and serving returns `reasoning_content`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TEXT_PARTS = ("text", "input_text", "output_text")
REASONING_PARTS = ("reasoning", "thinking")
MEDIA_PARTS = ("image", "image_url", "input_image", "audio", "input_audio", "video", "video_url", "file", "input_file")
CLOSE_AFTER = re.compile(r"\s*" + re.escape(THINK_CLOSE) + r"\s*")


def part_text(part: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = part.get(key)
        if isinstance(value, str):
            return value
    summary = part.get("summary")  # OpenAI's reasoning items: a list of summary_text parts
    if isinstance(summary, list) and all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in summary):
        return "\n".join(s["text"] for s in summary)
    return None


def read_parts(parts: list[Any], where: str) -> tuple[str, str | None]:
    """A list of content parts -> (text, reasoning or None)."""
    texts, thoughts = [], []
    for j, part in enumerate(parts):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise ValueError(f"{at} is not a content part ({{type, text}})")
        kind = part.get("type", "text")
        if kind in TEXT_PARTS:
            text = part_text(part, ("text", "value"))
            if text is None:
                raise ValueError(f"{at}: a {kind!r} part needs a string 'text' (or 'value')")
            texts.append(text)
        elif kind in REASONING_PARTS:
            text = part_text(part, (kind, "text", "value", "reasoning", "thinking"))
            if text is None:
                raise ValueError(f"{at}: a {kind!r} part needs its text as a string")
            thoughts.append(text)
        elif kind in MEDIA_PARTS or any(k in part for k in ("image_url", "input_audio", "image")):
            raise ValueError(
                f"{at} is a {kind!r} part: tunesmith trains text models only; leave out records with media"
            )
        else:
            raise ValueError(f"{at}: unknown part type {kind!r} (use {', '.join(TEXT_PARTS + REASONING_PARTS)})")
    return "".join(texts), ("\n".join(thoughts) if thoughts else None)


def split_think(content: str) -> tuple[str | None, str]:
    """A `<think>…</think>` block that opens a turn's content -> (reasoning, answer); otherwise
    (None, content) unchanged."""
    if THINK_OPEN not in content:
        return None, content
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return None, content
    end = stripped.find(THINK_CLOSE)
    if end < 0:
        return None, content
    return stripped[len(THINK_OPEN) : end].strip("\n"), stripped[end + len(THINK_CLOSE) :].lstrip()


def split_reply(text: str) -> tuple[str | None, str]:
    """A generated reply -> (reasoning, answer). A reply that opens a `<think>` block and never
    closes it is all reasoning (no answer); one that only closes it (the template opened it in
    the prompt) has its reasoning before the close."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        end = stripped.find(THINK_CLOSE)
        if end < 0:
            return stripped[len(THINK_OPEN) :].strip("\n") or None, ""
        return stripped[len(THINK_OPEN) : end].strip("\n") or None, stripped[end + len(THINK_CLOSE) :].lstrip()
    if THINK_CLOSE in text and THINK_OPEN not in text:
        before, _, after = text.partition(THINK_CLOSE)
        return before.strip("\n") or None, after.lstrip()
    return None, text


def answer_of(text: str) -> str:
    """What a reply answers, its reasoning left out: what metrics and probes score."""
    return split_reply(text)[1]


def turn_reasoning(m: dict[str, Any], role: str, content: str, where: str) -> tuple[str | None, str]:
    """The reasoning of one turn (fields, or a `<think>` block in its text) -> (reasoning, content)."""
    field = m.get("reasoning_content", m.get("reasoning"))
    if field is not None and not isinstance(field, str):
        raise ValueError(f"{where}.reasoning_content must be a string, got {type(field).__name__}")
    thought, content = split_think(content) if role == "assistant" else (None, content)
    if field is not None and field.strip():
        if role != "assistant":
            raise ValueError(f"{where}: only assistant turns carry reasoning")
        if thought is not None:
            raise ValueError(f"{where}: reasoning given twice (a reasoning field and a <think> block in the content)")
        thought = field.strip("\n")
    return thought, content


def template_takes_reasoning(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own chat template renders an assistant turn's `reasoning_content`."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return "reasoning_content" in template


def with_reasoning(reasoning: str, content: str) -> str:
    """The default rendering of a turn with reasoning (templates that know no reasoning)."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{content}"


def reasoning_end(text: str, reasoning: str, start: int, end: int) -> int | None:
    """Where the reasoning of the turn rendered at text[start:end] ends, its closing tag and the
    whitespace before the answer included; None when the template did not render it."""
    at = text.find(reasoning, start, end)
    if at < 0:
        return None
    stop = at + len(reasoning)
    close = CLOSE_AFTER.match(text, stop, end)
    return close.end() if close else stop


Piece = TypeVar("Piece")  # what a stream carries besides text (an end marker) passes through


class Thought(str):
    """A piece of streamed reasoning (a str, told apart from answer text by its type)."""


def split_stream(pieces: Iterable[Piece]) -> Iterator[Piece | str]:
    """Streamed reply text -> the same text as `Thought` pieces while a leading `<think>` block
    lasts, then plain answer pieces (leading whitespace dropped), as `split_reply` splits the
    whole reply. Anything that is not a str (the end marker) passes through after what was held.
    (A reply that only closes a block the prompt opened is told apart by `split_reply` alone.)"""
    held, state, begun = "", "start", False  # state: start (deciding), thinking, answer, plain
    for item in pieces:
        if not isinstance(item, str):
            if state == "thinking" and held.rstrip("\n"):
                yield Thought(held.rstrip("\n"))
            elif state in ("start", "plain", "answer") and held and (state != "answer" or held.strip()):
                yield held if state != "answer" else held.lstrip()
            held = ""
            yield item
            continue
        held += item
        if state == "start":
            lead = held.lstrip()
            if THINK_OPEN.startswith(lead) and len(lead) < len(THINK_OPEN):
                continue  # could still open a block
            if not lead.startswith(THINK_OPEN):
                state = "plain"
                yield held
                held = ""
                continue
            state, held = "thinking", lead[len(THINK_OPEN) :].lstrip("\n")
        if state == "thinking":
            if not begun:
                held = held.lstrip("\n")
            end = held.find(THINK_CLOSE)
            if end >= 0:
                if held[:end].rstrip("\n"):
                    yield Thought(held[:end].rstrip("\n"))
                state, held = "answer", held[end + len(THINK_CLOSE) :]
            else:
                safe = len(held) - (len(THINK_CLOSE) - 1)  # the tag may be split across pieces
                body = held[:safe].rstrip("\n") if safe > 0 else ""
                if body:
                    yield Thought(body)
                    held, begun = held[len(body) :], True
                continue
        if state == "answer":
            held = held.lstrip()
            if held:
                state = "plain"
                yield held
                held = ""
        elif state == "plain" and held:
            yield held
            held = ""
