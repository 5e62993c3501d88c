"""Tool-calling records in OpenAI's chat format, validated.

A record may carry `tools` (functions with JSON-schema `parameters`) and `parallel_tool_calls`;
an assistant turn may carry `tool_calls` (each `{id, type: "function", function: {name,
arguments}}`, the arguments a JSON object written as a string) and `weight` 0 or 1 (0: shown, not
trained); a `tool` turn answers one earlier call by its `tool_call_id`. Every problem is a
ValueError naming the field; the caller adds the location.
"""

from __future__ import annotations

import json
import re
from typing import Any

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names


def check_tools(tools: Any, field: str = "tools") -> list[dict[str, Any]]:
    """`tools` as OpenAI defines them: a list of `{type: "function", function: {name, description?,
    parameters?}}`, names unique, parameters a valid JSON schema of an object."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(tools, list) or not tools:
        raise ValueError(f"'{field}' must be a non-empty list of {{type: function, function: {{name, parameters}}}}")
    out, names = [], set()
    for i, tool in enumerate(tools):
        where = f"{field}[{i}]"
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            raise ValueError(f'{where} must be {{type: "function", function: {{name, parameters}}}}')
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise ValueError(f"{where}.function.name {name!r}: use 1-64 letters, digits, '_' or '-'")
        if name in names:
            raise ValueError(f"{where}.function.name {name!r} is defined twice")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ValueError(f"{where}.function.parameters must be a JSON schema object")
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as e:
            raise ValueError(f"{where}.function.parameters is not a valid JSON schema: {e.message}") from None
        if params.get("type", "object") != "object":
            raise ValueError(f"{where}.function.parameters must describe an object (type: object)")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{where}.function.description must be a string")
        entry = {"name": name, "parameters": params}
        if description:
            entry["description"] = description
        out.append({"type": "function", "function": entry})
    return out


def check_tool_calls(
    calls: Any, field: str, tools: list[dict[str, Any]] | None, counter: list[int]
) -> list[dict[str, Any]]:
    """An assistant turn's `tool_calls`, each naming a function of `tools` with a JSON object of
    arguments (a string, as OpenAI sends it; an object is accepted and written as one); ids
    missing from a record are numbered."""
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"{field} must be a non-empty list of {{id, type: function, function: {{name, arguments}}}}")
    known = {t["function"]["name"] for t in tools or []}
    out = []
    for j, call in enumerate(calls):
        where = f"{field}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise ValueError(f'{where} must be {{id, type: "function", function: {{name, arguments}}}}')
        name, arguments = call["function"].get("name"), call["function"].get("arguments")
        if not tools:
            raise ValueError(f"{where} calls {name!r} but the record has no 'tools'")
        if name not in known:
            raise ValueError(f"{where} calls {name!r}, which is not in 'tools' ({', '.join(sorted(known))})")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not isinstance(arguments, str):
            raise ValueError(f"{where}.function.arguments must be a JSON object string, got {type(arguments).__name__}")
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}.function.arguments is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{where}.function.arguments must be a JSON object, got {type(parsed).__name__}")
        call_id = call.get("id")
        if call_id is None:
            counter[0] += 1
            call_id = f"call_{counter[0]}"
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"{where}.id must be a non-empty string")
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    return out


def check_weight(message: dict[str, Any], field: str) -> int | None:
    """OpenAI's `weight` (assistant turns only), or `loss_weight` as other tools write it on every
    turn: 0 on a turn that is never trained says nothing and is accepted."""
    key = "weight" if "weight" in message else "loss_weight"
    weight = message.get(key)
    if weight is None:
        return None
    if message.get("role") != "assistant":
        if key == "weight":
            raise ValueError(f"{field}.weight: only assistant turns carry a weight")
        if weight == 0 and not isinstance(weight, bool):
            return None
        raise ValueError(
            f"{field}.loss_weight {weight!r}: only assistant turns are trained (data.train_on: all trains every token)"
        )
    if isinstance(weight, bool) or weight not in (0, 1):
        raise ValueError(f"{field}.{key} must be 0 or 1, got {weight!r}")
    return int(weight)


class PendingCalls:
    """Call ids asked and not yet answered, in order: a `tool` turn must answer one of them."""

    def __init__(self) -> None:
        self.open: list[str] = []

    def asked(self, calls: list[dict[str, Any]]) -> None:
        self.open = [c["id"] for c in calls]

    def answer(self, message: dict[str, Any], field: str) -> str:
        call_id = message.get("tool_call_id")
        if not self.open:
            raise ValueError(
                f"{field}: a tool message answers no call (no assistant tool_calls before it is unanswered)"
            )
        if call_id is None and len(self.open) == 1:
            call_id = self.open[0]
        if call_id not in self.open:
            raise ValueError(f"{field}.tool_call_id {call_id!r} answers no open call (open: {', '.join(self.open)})")
        self.open.remove(call_id)
        return str(call_id)
