"""Record layouts users bring, each turned into one validated Example.

Detected from the record's keys, or named per source with `format:`:
  messages           {"messages": [{"role", "content"}, ...], "tools"?, "parallel_tool_calls"?, "label"?}
                     (OpenAI chat: assistant `tool_calls` and `weight`, `tool` replies; `data/tool_calls.py`;
                     a boolean `label` judges the conversation, for KTO, as LLaMA-Factory writes it)
  sharegpt           {"conversations": [{"from": human|gpt|system|function_call|observation, "value"}, ...],
                     "tools"?, "kto_tag"?}  (function_call: a call as {"name", "arguments"}; observation:
                     its result; `"tools": "[]"`: none)
  alpaca             {"instruction", "input"?, "output", "system"?, "history"?}  (history: [[q, a], ...])
  prompt_completion  {"prompt", "completion", "label"?}  (strings, or message lists; a boolean
                     label judges the completion: true desirable, false not, for KTO)
  preference         {"prompt", "chosen", "rejected", "margin"?}  (strings, or message lists; a
                     number margin says how much better chosen is, for reward models); the history
                     may instead be `messages` or ShareGPT `conversations`, each side one message
                     or ShareGPT turn (LLaMA-Factory's dpo files), or the sides whole conversations
                     (TRL's implicit prompt)
  openai_preference  {"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output",
                     "non_preferred_output"}  (OpenAI's DPO files: each output a list of assistant messages)
  prompt             {"prompt", "reference"?}  (a prompt alone, for methods that generate their
                     own responses: online RL, labelling; reference: what a reward may compare to)
  openai_reinforcement  {"messages" (ending with a user or developer turn), "tools"?, any other
                     fields}  (OpenAI's reinforcement files: the other fields are the `item` graders read)
  text               {"text"}  (plain text: every token is trained)
A message's content may be a list of parts, and an assistant turn may carry reasoning
(`data/reasoning.py`); `loss_weight` 0/1 on any turn reads as `weight`. Keys that change what a
record teaches but that its layout does not read are noted on the Example (`ignored`), for the
loader to report. Records written by `tunesmith label` that carry no preference (judgement tie or
both_bad) are recognised and left out (`to_example` returns None), so a labelled file trains as it
is. `columns: {layout_key: column}` renames a source's columns into one of these layouts first.
Every problem is a ValueError whose message says what is wrong; the caller adds the location.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tunesmith.data.reasoning import read_parts, turn_reasoning
from tunesmith.data.tool_calls import PendingCalls, check_tool_calls, check_tools, check_weight

ROLES = ("system", "developer", "user", "assistant", "tool")  # developer: OpenAI's newer name for system
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
}
RecordFormat = Literal[
    "auto",
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "preference",
    "openai_preference",
    "prompt",
    "openai_reinforcement",
    "text",
]
FORMATS: tuple[str, ...] = get_args(RecordFormat)
NO_PREFERENCE = ("tie", "both_bad")  # label-page judgements that prefer neither response


@dataclass
class Example:
    """One validated training example; `source` is its location (`file:line`) for messages.

    Chat layouts fill `messages`; plain text fills `text`; preference pairs fill `messages`
    (prompt + chosen) and `rejected` (prompt + rejected).
    """

    messages: list[dict[str, Any]] | None
    source: str
    text: str | None = None
    rejected: list[dict[str, Any]] | None = None
    layout: str = "messages"
    train_on: str | None = None  # per-source override of data.train_on
    desirable: bool | None = None  # a judged single response (label: true/false), for KTO
    margin: float | None = None  # preference pairs: how much better chosen is (reward models)
    reference: str | None = None  # prompt layout: what a reward function may compare a response to
    tools: list[dict[str, Any]] | None = None  # functions the conversation may call (OpenAI `tools`)
    parallel_tool_calls: bool = True
    item: dict[str, Any] | None = None  # the whole record, for graders that read its fields (`{{item.FIELD}}`)
    ignored: tuple[str, ...] = ()  # keys that would change the record's meaning, unread by its layout


# Keys that change what a record teaches, and the layouts that read them; elsewhere they are
# ignored, and the loader says so (a `label` on a file read as plain chat, a pair read as SFT).
MEANINGFUL = ("label", "kto_tag", "chosen", "rejected", "weight", "loss_weight", "tools", "margin")
MEANING_SET = frozenset(MEANINGFUL)
READS = {
    "messages": {"label", "kto_tag", "tools"},
    "sharegpt": {"label", "kto_tag", "tools"},
    "alpaca": {"label", "kto_tag"},
    "prompt_completion": {"label", "kto_tag"},
    "preference": {"chosen", "rejected", "margin", "tools"},
    "openai_preference": set(),
    "prompt": set(),
    "openai_reinforcement": set(MEANINGFUL),
    "text": set(),
}


def ignored_keys(record: dict[str, Any], layout: str) -> tuple[str, ...]:
    present = record.keys() & MEANING_SET
    if not present or present <= READS[layout]:
        return ()
    return tuple(k for k in MEANINGFUL if k in present and k not in READS[layout])


def detect(record: dict[str, Any]) -> str:
    if {"preferred_output", "non_preferred_output"} & set(record) or isinstance(record.get("input"), dict):
        return "openai_preference"
    if "chosen" in record and "rejected" in record:
        return "preference"  # a pair, after a `prompt`, `messages` or ShareGPT `conversations` history
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and not {"completion", "chosen", "rejected"} & set(record):
        return "prompt"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(
        f"unknown layout (keys: {keys}); expected messages, conversations, prompt/completion, "
        "instruction/output, prompt/chosen/rejected or text (or set format:/columns: on the source)"
    )


def check_messages(
    messages: Any,
    field: str = "messages",
    need_assistant: bool = True,
    tools: list[dict[str, Any]] | None = None,
    system_first: bool = True,
) -> list[dict[str, Any]]:
    """Validated turns as `{role, content}`, plus `tool_calls` and `weight` on assistant turns and
    `tool_call_id` on tool turns where the record has them. `system_first`: training data keeps
    a system turn first; a request to the server may place one anywhere, as OpenAI's API allows."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{field}' must be a non-empty list of {{role, content}} objects")
    out, pending, counter = [], PendingCalls(), [0]
    for i, m in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}.role {role!r} not allowed (use one of: {', '.join(ROLES)})")
        role = "system" if role == "developer" else role
        calls = m.get("tool_calls") if role == "assistant" else None
        thought = None
        if isinstance(content, list):
            content, thought = read_parts(content, where)
        if calls is not None and content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"{where}.content must be a string or a list of text parts, got {type(content).__name__}")
        if role == "system" and i != 0 and system_first:
            raise ValueError(f"{where}: a system message may only come first")
        if ("<think>" in content and role == "assistant") or "reasoning_content" in m or "reasoning" in m:
            found, content = turn_reasoning(m, role, content, where)
            if found is not None and thought is not None:
                raise ValueError(
                    f"{where}: reasoning given twice (a reasoning part and a reasoning field or <think> block)"
                )
            thought = found if found is not None else thought
        elif thought is not None and role != "assistant":
            raise ValueError(f"{where}: only assistant turns carry reasoning")
        turn: dict[str, Any] = {"role": role, "content": content}
        if thought is not None:
            turn["reasoning"] = thought
        if calls is not None:
            turn["tool_calls"] = check_tool_calls(calls, f"{where}.tool_calls", tools, counter)
            pending.asked(turn["tool_calls"])
        if role == "tool":
            turn["tool_call_id"] = pending.answer(m, where)
        if "weight" in m or "loss_weight" in m:
            weight = check_weight({**m, "role": role}, where)
            if weight is not None:
                turn["weight"] = weight
        out.append(turn)
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant turn to learn from")
    if need_assistant and all(m.get("weight") == 0 for m in out if m["role"] == "assistant"):
        raise ValueError("every assistant turn has weight 0: nothing to learn from")
    return out


def record_tools(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A record's `tools`: OpenAI's list, or the ShareGPT/Hermes habit of a JSON string of bare
    function definitions ({name, description, parameters})."""
    tools = record.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise ValueError(f"'tools' is a string but not JSON ({e.msg})") from None
    if isinstance(tools, list):
        if not tools:
            return None  # `"tools": "[]"`: no functions in this conversation
        tools = [
            {"type": "function", "function": t} if isinstance(t, dict) and "function" not in t and "name" in t else t
            for t in tools
        ]
    return check_tools(tools)


def parallel_flag(record: dict[str, Any]) -> bool:
    flag = record.get("parallel_tool_calls", True)
    if not isinstance(flag, bool):
        raise ValueError(f"'parallel_tool_calls' must be true or false, got {flag!r}")
    return flag


def _string(record: dict[str, Any], key: str, allow_empty: bool = True) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"'{key}' is empty: nothing to learn from")
    return value


def _turns(value: Any, field: str, role: str) -> list[dict[str, Any]]:
    """A string as one turn of `role`, or a message list as it is."""
    if isinstance(value, str):
        if role == "assistant" and not value.strip():
            raise ValueError(f"'{field}' is empty: nothing to learn from")
        return [{"role": role, "content": value}]
    return check_messages(value, field, need_assistant=False)


def from_messages(record: dict[str, Any], tools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return check_messages(record.get("messages"), tools=tools)


def from_sharegpt(record: dict[str, Any], tools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return check_messages(sharegpt_turns(record.get("conversations"), "conversations"), "conversations", tools=tools)


TURN_EXTRAS = ("weight", "loss_weight", "reasoning_content", "reasoning")  # per-turn keys kept from ShareGPT turns


def sharegpt_turn(t: Any, where: str) -> dict[str, Any]:
    """One ShareGPT turn {from, value} as a message {role, content} (unchecked)."""
    if not isinstance(t, dict):
        raise ValueError(f"{where} is not an object")
    if (
        not isinstance(t.get("from"), str) or t["from"] not in SHAREGPT_ROLES
    ):  # a list is no key: a clear error, not a TypeError
        raise ValueError(
            f"{where}.from {t.get('from')!r} not allowed (use human, gpt, system, function_call or observation)"
        )
    if t["from"] == "function_call":
        turn: dict[str, Any] = {
            "role": "assistant",
            "content": "",
            "tool_calls": _sharegpt_calls(t.get("value"), where),
        }
    else:
        turn = {"role": SHAREGPT_ROLES[t["from"]], "content": t.get("value")}
    for key in TURN_EXTRAS:
        if key in t:
            turn[key] = t[key]
    return turn


def sharegpt_turns(turns: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"'{field}' must be a non-empty list of {{from, value}} objects")
    return [sharegpt_turn(t, f"{field}[{i}]") for i, t in enumerate(turns)]


def _sharegpt_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """A function_call turn's value: one call {"name", "arguments"} or a list of them, as JSON text."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}.value of a function_call turn is not JSON ({e.msg})") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not all(isinstance(c, dict) for c in calls):
        raise ValueError(f"{where}.value must be a call {{name, arguments}} or a list of them")
    return [
        {"type": "function", "function": {"name": c.get("name"), "arguments": c.get("arguments", {})}} for c in calls
    ]


def from_alpaca(record: dict[str, Any]) -> list[dict[str, Any]]:
    instruction, output = _string(record, "instruction"), _string(record, "output", allow_empty=False)
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError(f"'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = alpaca_history(record.get("history")) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": output},
    ]
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


def alpaca_history(history: Any) -> list[dict[str, Any]]:
    """LLaMA-Factory's alpaca `history`: earlier [instruction, response] pairs, oldest first."""
    if history in (None, ""):
        return []
    if not isinstance(history, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history
    ):
        raise ValueError("'history' must be a list of [instruction, response] string pairs")
    return [turn for q, a in history for turn in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def from_prompt_completion(record: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("prompt", "completion"):
        if key not in record:
            raise ValueError(f"missing '{key}'")
    messages = _turns(record["prompt"], "prompt", "user") + _turns(record["completion"], "completion", "assistant")
    return check_messages(messages, "prompt+completion")


def from_preference(
    record: dict[str, Any], tools: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A pair after its history: `prompt` (a string or messages), LLaMA-Factory's ShareGPT
    `conversations`, or `messages`; each side a string, one message or a list of messages."""
    if "conversations" in record:
        history = sharegpt_turns(record["conversations"], "conversations")
    elif "messages" in record:
        history = record["messages"]
        if not isinstance(history, list):
            raise ValueError("'messages' must be a list of {role, content} objects")
    elif record.get("prompt") not in (None, []):
        history = _turns(record["prompt"], "prompt", "user")
    else:
        history = []
    chosen, rejected = _side(record.get("chosen"), "chosen"), _side(record.get("rejected"), "rejected")
    return (
        check_messages(history + chosen, "prompt+chosen", tools=tools),
        check_messages(history + rejected, "prompt+rejected", tools=tools),
    )


def _side(value: Any, field: str) -> list[dict[str, Any]]:
    """One side of a pair as messages: a string is an assistant turn; a message or ShareGPT turn,
    or a list of them, as given."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"'{field}' is empty: nothing to learn from")
        return [{"role": "assistant", "content": value}]
    turns = value if isinstance(value, list) else [value]
    if not turns or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"'{field}' must be a string, a message or a list of messages")
    return [sharegpt_turn(t, f"{field}[{i}]") if "from" in t else t for i, t in enumerate(turns)]


def from_openai_preference(
    record: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]] | None, bool]:
    """OpenAI's DPO record -> (prompt + preferred, prompt + non-preferred, tools, parallel_tool_calls)."""
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in record:
            raise ValueError(
                f"missing '{key}' (OpenAI's DPO records have input, preferred_output and non_preferred_output)"
            )
    given = record["input"]
    if not isinstance(given, dict):
        raise ValueError(f"'input' must be an object with 'messages', got {type(given).__name__}")
    tools = record_tools(given)
    prompt = check_messages(given.get("messages"), "input.messages", need_assistant=False, tools=tools)
    if prompt[-1]["role"] == "assistant":
        raise ValueError("'input.messages' ends with an assistant turn: nothing left to respond to")
    sides = []
    for key in ("preferred_output", "non_preferred_output"):
        output = record[key]
        if (
            not isinstance(output, list)
            or not output
            or any(not isinstance(m, dict) or m.get("role") != "assistant" for m in output)
        ):
            raise ValueError(f"'{key}' must be a list of assistant messages")
        sides.append(check_messages(prompt + output, f"input.messages+{key}", tools=tools))
    return sides[0], sides[1], tools, parallel_flag(given)


def from_prompt(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    if "prompt" not in record:
        raise ValueError("missing 'prompt'")
    reference = record.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError(f"'reference' must be a string, got {type(reference).__name__}")
    messages = check_messages(_turns(record["prompt"], "prompt", "user"), "prompt", need_assistant=False)
    if messages[-1]["role"] == "assistant":
        raise ValueError("'prompt' ends with an assistant turn: nothing left to respond to")
    return messages, reference


def apply_columns(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Rename a source's columns into a layout's keys: columns = {layout_key: source_column}."""
    missing = [col for col in columns.values() if col not in record]
    if missing:
        raise ValueError(f"column '{missing[0]}' (named in columns:) not in record (keys: {', '.join(sorted(record))})")
    return {key: record[col] for key, col in columns.items()}


def to_example(
    record: dict[str, Any], location: str, fmt: str = "auto", columns: dict[str, str] | None = None
) -> Example | None:
    """One record in any supported layout -> a validated Example (ValueError says what is wrong),
    or None for a labelled record that prefers neither response."""
    if columns:
        record = apply_columns(record, columns)
    layout = detect(record) if fmt == "auto" else fmt
    example = _convert(record, location, layout)
    if example is not None:
        example.ignored = ignored_keys(record, layout)
    return example


def _convert(record: dict[str, Any], location: str, layout: str) -> Example | None:
    if layout == "text":
        return Example(None, location, text=_string(record, "text", allow_empty=False), layout="text")
    if record.get("judgement") in NO_PREFERENCE and "chosen" not in record:
        return None  # judged on the label page, but neither reply preferred
    if layout == "preference":
        tools = record_tools(record)
        chosen, rejected = from_preference(record, tools)
        margin = record.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise ValueError(f"'margin' must be a number, got {margin!r}")
        return Example(
            chosen,
            location,
            rejected=rejected,
            layout="preference",
            margin=margin,
            tools=tools,
            parallel_tool_calls=parallel_flag(record),
        )
    if layout == "openai_preference":
        chosen, rejected, tools, parallel = from_openai_preference(record)
        return Example(
            chosen, location, rejected=rejected, layout="preference", tools=tools, parallel_tool_calls=parallel
        )
    if layout == "prompt":
        messages, reference = from_prompt(record)
        return Example(messages, location, layout="prompt", reference=reference, item=record)
    if layout == "openai_reinforcement":
        tools = record_tools(record)
        messages = check_messages(record.get("messages"), need_assistant=False, tools=tools)
        if messages[-1]["role"] not in ("user", "developer"):
            raise ValueError(
                f"'messages' ends with a {messages[-1]['role']} turn; a reinforcement record ends with "
                "the user (or developer) turn the model answers"
            )
        reference = record.get("reference_answer", record.get("reference"))
        return Example(
            messages,
            location,
            layout="prompt",
            reference=reference if isinstance(reference, str) else None,
            tools=tools,
            parallel_tool_calls=parallel_flag(record),
            item=record,
        )
    convert: Callable[..., list[dict[str, Any]]] = {
        "messages": from_messages,
        "sharegpt": from_sharegpt,
        "alpaca": from_alpaca,
        "prompt_completion": from_prompt_completion,
    }[layout]
    label = record.get("label", record.get("kto_tag"))  # kto_tag: LLaMA-Factory's name for it
    if label is not None and not isinstance(label, bool):
        key = "label" if "label" in record else "kto_tag"
        raise ValueError(f"'{key}' must be true or false (is the response desirable?), got {label!r}")
    if layout in ("messages", "sharegpt"):
        tools = record_tools(record)
        messages = convert(record, tools)
    else:
        tools, messages = None, convert(record)
    return Example(
        messages, location, layout=layout, desirable=label, tools=tools, parallel_tool_calls=parallel_flag(record)
    )
