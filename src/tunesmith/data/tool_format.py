"""How tools and tool calls become text, and how a reply's text becomes calls again.

Where the model's chat template takes `tools` (Qwen, Llama 3.1, Hermes-style templates), the
conversation goes to it as OpenAI writes it: calls on assistant turns (arguments as objects, as
those templates expect), `tool` turns, the tool list as `tools=`. Where it does not (the bundled
SmolLM2's ChatML, the default template), one fallback, the Hermes convention:
- the tool list goes into the system turn (one is added if the conversation has none):
  FALLBACK_INSTRUCTIONS, then `<tools>`, one function per line as JSON, `</tools>`;
- each call is a block `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` after the
  assistant's text (several blocks for parallel calls);
- a tool's reply is a `tool` turn holding its content.
The same rendering is used to train, generate, evaluate and serve, and `parse_reply` reads the
blocks back, so what is trained is what is parsed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FALLBACK_INSTRUCTIONS = (
    "You can call the functions below. To call one, reply with a block "
    f'{CALL_OPEN}\n{{"name": <function name>, "arguments": <arguments as a JSON object>}}\n{CALL_CLOSE}'
    "; several blocks call several functions. Functions:"
)
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


def template_takes_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own chat template renders a `tools` list."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return re.search(r"\btools\b", template) is not None


def tool_list_text(tools: list[dict[str, Any]]) -> str:
    lines = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return f"{FALLBACK_INSTRUCTIONS}\n<tools>\n{lines}\n</tools>"


def calls_text(calls: list[dict[str, Any]]) -> str:
    """Calls as the fallback writes them: one block each, arguments as a JSON object."""
    blocks = []
    for call in calls:
        body = {"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])}
        blocks.append(f"{CALL_OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{CALL_CLOSE}")
    return "\n".join(blocks)


def turn_text(turn: dict[str, Any]) -> str:
    """An assistant turn as the fallback writes it: its content, then its calls' blocks."""
    if not turn.get("tool_calls"):
        return str(turn["content"])
    return f"{turn['content']}\n{calls_text(turn['tool_calls'])}" if turn["content"] else calls_text(turn["tool_calls"])


def for_template(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and `tools=` as the chat template gets them: OpenAI's fields for a template that
    takes tools, the fallback's plain turns otherwise (a template's `reasoning_content` kept). Fields only
    tunesmith reads (weight) go."""
    if native:
        out = []
        for m in messages:
            turn = {k: v for k, v in m.items() if k != "weight"}
            if "tool_calls" in turn:
                turn["tool_calls"] = [
                    {
                        **c,
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": json.loads(c["function"]["arguments"]),
                        },
                    }
                    for c in turn["tool_calls"]
                ]
            out.append(turn)
        return out, tools
    out = [
        {"role": m["role"], "content": turn_text(m)}
        if "reasoning_content" not in m
        else {"role": m["role"], "content": turn_text(m), "reasoning_content": m["reasoning_content"]}
        for m in messages
    ]
    if tools:
        listed = tool_list_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listed}" if out[0]["content"] else listed}
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out, None


@dataclass
class Reply:
    """A generated reply read back: its text outside call blocks and the calls, or, when a block
    does not parse as a call, the whole text and no calls (`problem` says why)."""

    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None


def parse_reply(text: str, tool_names: set[str] | None = None) -> Reply:
    """Calls in `<tool_call>` blocks, or a reply that is one bare JSON call ({"name", "arguments"
    or "parameters"}: what Llama 3.1-style templates produce). Arguments come back as JSON strings."""
    blocks = _BLOCK.findall(text)
    if not blocks:
        stripped = text.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            call, _ = _call(stripped, tool_names)
            if call is not None:
                return Reply("", [call])
        if CALL_OPEN in text:
            return Reply(text, problem="an unclosed <tool_call> block")
        return Reply(text)
    calls = []
    for block in blocks:
        call, problem = _call(block, tool_names)
        if call is None:
            return Reply(text, problem=problem)
        calls.append(call)
    content = _BLOCK.sub("", text).strip()
    if CALL_OPEN in content:
        return Reply(text, problem="an unclosed <tool_call> block")
    return Reply(content, calls)


def _call(body: str, tool_names: set[str] | None) -> tuple[dict[str, Any] | None, str | None]:
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError as e:
        return None, f"a call is not JSON ({e.msg})"
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        return None, "a call has no function name"
    arguments = parsed.get("arguments", parsed.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None, "a call's arguments are not JSON"
    if not isinstance(arguments, dict):
        return None, "a call's arguments are not a JSON object"
    if tool_names is not None and parsed["name"] not in tool_names:
        return None, f"a call to {parsed['name']!r}, which is not among the tools"
    return {
        "type": "function",
        "function": {"name": parsed["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }, None
