"""Scores for a reply where the reference is a tool call (or a reply that should call nothing).

Pure functions of (reply text, reference assistant turn, tools), each a float in [0, 1] or
absent where it does not apply, so a test set's score is the mean over the examples it applies to:

  tool_call_rate          a call was expected: the reply calls something
  tool_abstention         no call was expected: the reply calls nothing
  tool_name_accuracy      the functions called are the expected ones (as a multiset)
  tool_args_valid_json    of the call blocks the reply wrote, the share whose arguments are a JSON object
  tool_args_schema_valid  of the calls read, the share whose arguments validate against the function's schema
  tool_call_exact         the calls equal the expected ones: names and arguments as parsed JSON
                          (key order ignored), in any order
  tool_argument_accuracy  of the expected arguments, the share the reply gives the same value
                          (calls matched by name)
"""

from __future__ import annotations

import json
import re
from collections import Counter

from tunesmith.data.tool_format import CALL_CLOSE, CALL_OPEN, parse_reply

_BLOCKS = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CALL_CLOSE) + r"|$)", re.DOTALL)


def _arguments(call: dict) -> dict:
    return json.loads(call["function"]["arguments"])


def _valid_json_share(text: str) -> float | None:
    """Call blocks whose `arguments` is a JSON object, over the blocks written (None: no block)."""
    blocks = _BLOCKS.findall(text)
    if not blocks:
        return None
    good = 0
    for body in blocks:
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError:
            continue
        good += isinstance(parsed, dict) and isinstance(parsed.get("arguments", parsed.get("parameters")), dict)
    return good / len(blocks)


def _schema_valid(call: dict, schemas: dict[str, dict]) -> bool:
    from jsonschema import Draft202012Validator

    schema = schemas.get(call["function"]["name"])
    return schema is not None and Draft202012Validator(schema).is_valid(_arguments(call))


def _canonical(call: dict) -> tuple[str, str]:
    return call["function"]["name"], json.dumps(_arguments(call), sort_keys=True)


def _argument_accuracy(predicted: list[dict], expected: list[dict]) -> float | None:
    unused = list(predicted)
    right = total = 0
    for ref in expected:
        ref_args = _arguments(ref)
        match = next((c for c in unused if c["function"]["name"] == ref["function"]["name"]), None)
        if match is not None:
            unused.remove(match)
        got = _arguments(match) if match is not None else {}
        total += len(ref_args)
        right += sum(1 for k, v in ref_args.items() if k in got and got[k] == v)
    return right / total if total else None


def tool_scores(reply: str, reference: dict, tools: list[dict]) -> dict[str, float]:
    """The tool-call metrics that apply to this reply against the reference assistant turn."""
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    read = parse_reply(reply, set(schemas))
    expected = reference.get("tool_calls") or []
    out: dict[str, float] = {}
    valid_json = _valid_json_share(reply)
    if valid_json is not None:
        out["tool_args_valid_json"] = valid_json
    if read.calls:
        out["tool_args_schema_valid"] = sum(_schema_valid(c, schemas) for c in read.calls) / len(read.calls)
    if not expected:
        out["tool_abstention"] = float(not read.calls and valid_json is None)
        return out
    out["tool_call_rate"] = float(bool(read.calls))
    out["tool_name_accuracy"] = float(
        Counter(c["function"]["name"] for c in read.calls) == Counter(c["function"]["name"] for c in expected)
    )
    out["tool_call_exact"] = float(Counter(map(_canonical, read.calls)) == Counter(map(_canonical, expected)))
    accuracy = _argument_accuracy(read.calls, expected)
    if accuracy is not None:
        out["tool_argument_accuracy"] = accuracy
    return out
