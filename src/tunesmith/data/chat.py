"""Render a conversation with the model's chat template into token ids and a loss mask.

The mask covers every assistant turn's content *and* its end-of-turn token, so the model learns to
stop; it excludes the template's scaffolding and everything the user or system wrote. The
template decides where BOS goes, so no second BOS is ever added on top of it.

Assistant spans are found by rendering the conversation prefix by prefix: the text an assistant
turn adds is `render(messages[:i+1])` minus `render(messages[:i], add_generation_prompt=True)`.
Tokens are mapped to those character spans through the fast tokenizer's offsets. An assistant
turn with `weight: 0` is shown, not trained. Tools and calls are rendered by `data/tool_format.py`
(the template's own tool support, or the documented fallback): a call is assistant text, so it
is trained with its end-of-turn token; the tool list (system turn) and tool replies are not.
An assistant turn's reasoning goes to a template that renders `reasoning_content` as that, to any
other as a `<think>` block before the answer (`data/reasoning.py`); it is trained with the answer
unless `train_reasoning` is off, and `Encoded.reasoning` marks its tokens (for `data inspect`).

A model without a chat template (a base model, such as Gemma 3 270M's GGUF) is given
`DEFAULT_CHAT_TEMPLATE`: each turn as `<|role|>` on its own line, then the content, an
assistant turn closed by the EOS token. `model.load.load_tokenizer` sets it, so a run's final
model and every export carry the template training used, and serving and generation use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.reasoning import reasoning_end, template_takes_reasoning, with_reasoning
from tunesmith.data.tool_format import for_template, template_takes_tools
from tunesmith.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunesmith.data.layouts import Example

IGNORE = -100
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    truncated: bool = False
    reasoning: list[bool] | None = None  # per token: part of an assistant turn's reasoning (None: none has any)


def reasoning_turns(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns with reasoning as the template takes them: `reasoning_content` where it renders
    that, else the default `<think>` block before the answer (`data/reasoning.py`)."""
    if not any("reasoning" in m for m in messages):
        return messages
    native = template_takes_reasoning(tokenizer)
    out = []
    for m in messages:
        if "reasoning" not in m:
            out.append(m)
            continue
        turn = {k: v for k, v in m.items() if k != "reasoning"}
        if native:
            turn["reasoning_content"] = m["reasoning"]
        else:
            turn["content"] = with_reasoning(m["reasoning"], m["content"])
        out.append(turn)
    return out


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The conversation as the model reads it (tools, calls and reasoning included)."""
    native = template_takes_tools(tokenizer)
    turns, tools_arg = for_template(reasoning_turns(tokenizer, messages), tools, native)
    text = tokenizer.apply_chat_template(
        turns,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE,
        tools=list[dict[str, Any] | Callable[..., Any]](tools_arg) if tools_arg else None,
    )
    assert isinstance(text, str)  # tokenize=False
    return text


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """The full rendered text, the [start, end) character spans that carry loss (assistant
    turns, but those of weight 0), and within them the spans of their reasoning (from the turn's
    start through the closing tag and the whitespace before the answer)."""
    full = render(tokenizer, messages, tools=tools)
    eos = tokenizer.eos_token or ""
    spans, thinking = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight") == 0:
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
        through = render(tokenizer, messages[: i + 1], tools=tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError(
                "the model's chat template does not render conversations incrementally; "
                "cannot locate assistant turns for the loss mask"
            )
        start, end = len(before), len(through)
        # Train through the end-of-turn token, not the template's whitespace after it.
        stop = full.rfind(eos, start, end) if eos else -1
        if stop >= 0:
            end = stop + len(eos)
        spans.append((start, end))
        if "reasoning" in m and m["reasoning"]:
            r_end = reasoning_end(full, m["reasoning"], start, end)
            if r_end is None:
                raise UserError(
                    f"the model's chat template leaves out the reasoning of turn {i}; "
                    "only the last assistant turn's reasoning is rendered by some templates"
                )
            thinking.append((start, r_end))
    return full, spans, thinking


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    max_length: int,
    train_on: str = "all_assistant",
    tools: list[dict[str, Any]] | None = None,
    train_reasoning: bool = True,
) -> Encoded:
    """Token ids and labels for one conversation.

    train_on: `all_assistant` (every assistant turn), `last` (the last assistant turn only) or
    `all` (every token, prompts and template included). `train_reasoning: False` leaves an
    assistant turn's reasoning (and its tags) out of the loss: only the answer is trained.
    """
    text, turns, thinking = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    spans = {"last": turns[-1:], "all": [(0, len(text))]}.get(train_on, turns)
    labels = [IGNORE] * len(ids)
    for k, (a, b) in enumerate(offsets):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[k] = ids[k]
    reasoning = None
    if thinking:
        reasoning = [b > a and any(s <= a < e for s, e in thinking) for a, b in offsets]
        if not train_reasoning:
            labels = [IGNORE if r else label for r, label in zip(reasoning, labels)]
    # A template that closes the last assistant turn without EOS: append it, or the model
    # never learns to stop.
    eos = tokenizer.eos_token
    last_has_eos = bool(eos) and bool(turns) and text[turns[-1][0] : turns[-1][1]].endswith(eos)
    last_trained = messages[-1]["role"] == "assistant" and messages[-1].get("weight") != 0
    if last_trained and not last_has_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
        if reasoning is not None:
            reasoning.append(False)
    return _cut(ids, labels, max_length, reasoning)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> Encoded:
    """Plain text (continued pre-training): every token trained, the tokenizer's BOS, EOS appended."""
    ids = tokenizer(text)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return _cut(ids, list(ids), max_length)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int, train_on: str, train_reasoning: bool = True
) -> Encoded:
    """Any Example: plain text trains every token; chat layouts (and a preference pair's chosen
    side) train what `train_on` says, unless the example's source overrides it."""
    if example.text is not None:
        return encode_text(tokenizer, example.text, max_length)
    assert example.messages is not None  # an example is text or messages
    return encode_chat(
        tokenizer, example.messages, max_length, example.train_on or train_on, example.tools, train_reasoning
    )


def _cut(ids: list[int], labels: list[int], max_length: int, reasoning: list[bool] | None = None) -> Encoded:
    return Encoded(
        ids[:max_length],
        labels[:max_length],
        truncated=len(ids) > max_length,
        reasoning=reasoning[:max_length] if reasoning is not None else None,
    )


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Token ids that ask the model for the next assistant turn (for generation and evaluation)."""
    text = render(tokenizer, messages, add_generation_prompt=True, tools=tools)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
