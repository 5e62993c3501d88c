"""Decoding constrained to a tool call whose arguments validate against the function's schema.

With `tool_choice: required` (any of the tools) or a named function, a reply must be a call. The
grammar is the fallback's call format (`data/tool_format.py`): one `<tool_call>` block, or several
separated by newlines where parallel calls are allowed, each holding
`{"name": <one of the functions>, "arguments": <an object valid against its parameters>}`,
written with json.dumps' separators. llguidance (the grammar engine llama.cpp, vLLM and SGLang
use) compiles it, JSON schema included, and gives at each step the set of tokens that keep the
reply inside the grammar; the generation engine masks every other token for the rows under a
grammar (`generation/sampling.RowGrammar`) and leaves EOS as the only choice once the call is
complete. A reply cut short by the token limit is
an incomplete call (finish reason `length`).
"""

from __future__ import annotations

import json
from functools import lru_cache

from tunesmith.data.tool_format import CALL_CLOSE, CALL_OPEN
from tunesmith.errors import UserError

SEPARATORS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # json.dumps' defaults


def call_schema(tools: list[dict], name: str | None = None) -> dict:
    """The JSON schema of one call: the named function's, or any of the tools'."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    if not chosen:
        raise UserError(f"tool_choice names {name!r}, which is not among the tools")
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


MAX_PARALLEL_CALLS = 8  # a bound, so a model that never stops calling still ends in complete calls


def call_grammar(tools: list[dict], name: str | None = None, parallel: bool = False) -> str:
    """A Lark grammar (llguidance's dialect) for a reply that is one call, or up to
    MAX_PARALLEL_CALLS of them."""
    schema = {**call_schema(tools, name), "x-guidance": SEPARATORS}
    block = f"{json.dumps(CALL_OPEN + chr(10))} %json {json.dumps(schema)} {json.dumps(chr(10) + CALL_CLOSE)}"
    repeat = f' ("\\n" call){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel and name is None else ""
    return f"start: call{repeat}\ncall: {block}\n"


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer, n_vocab: int):
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)


def matcher(tokenizer, grammar: str, n_vocab: int):
    """An llguidance matcher for `grammar` over the model's vocabulary (its logits' width)."""
    import llguidance

    m = llguidance.LLMatcher(
        _ll_tokenizer(tokenizer, n_vocab), llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
    )
    if m.is_error():
        raise UserError(f"tool call grammar: {m.get_error()}")
    return m
