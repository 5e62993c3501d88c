"""Decoding constrained to a tool call whose arguments validate against the function's schema.

With `tool_choice: required` (any of the tools) or a named function, a reply must be a call. The
grammar is the fallback's call format (`data/tool_format.py`): one `<tool_call>` block, or several
separated by newlines where parallel calls are allowed, each holding
`{"name": <one of the functions>, "arguments": <an object valid against its parameters>}`,
written with json.dumps' separators. llguidance (the grammar engine llama.cpp, vLLM and SGLang
use) compiles it, JSON schema included, and gives at each step the set of tokens that keep the
reply inside the grammar; `GrammarLogits` masks every other token for the rows it constrains and
leaves EOS as the only choice once the call is complete. A reply cut short by the token limit is
an incomplete call (finish reason `length`).
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from transformers import LogitsProcessor

from tunesmith.data.tool_format import CALL_CLOSE, CALL_OPEN
from tunesmith.errors import UserError
from tunesmith.generation.sampling import unpack_bitmask

SEPARATORS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # json.dumps' defaults


def call_schema(tools: list[dict], name: str | None = None) -> dict:
    """The JSON schema of one call: the named function's, or any of the tools'."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    if not chosen:
        raise UserError(f"tool_choice names {name!r}, which is not among the tools")
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                  "arguments": t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
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

    m = llguidance.LLMatcher(_ll_tokenizer(tokenizer, n_vocab), llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    if m.is_error():
        raise UserError(f"tool call grammar: {m.get_error()}")
    return m


class GrammarLogits(LogitsProcessor):
    """For `generate`: rows with a matcher may only take tokens their grammar allows, and only
    `eos` once the grammar is complete (the matcher stops by itself when nothing may follow);
    rows without one (None) decode freely."""

    def __init__(self, matchers: list, eos: int):
        self.matchers, self.eos = matchers, eos
        self.started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import llguidance.torch as llt

        if self.started:
            for row, m in enumerate(self.matchers):
                if m is not None and not m.is_stopped():
                    m.consume_token(int(input_ids[row, -1]))
        self.started = True
        n_vocab = scores.shape[-1]
        bitmask = llt.allocate_token_bitmask(len(self.matchers), n_vocab)
        rows, complete = [], []
        for row, m in enumerate(self.matchers):
            if m is None:
                continue
            if m.is_stopped():
                complete.append(row)
            else:
                llt.fill_next_token_bitmask(m, bitmask, row)
                rows.append(row)
        if rows:
            allowed = unpack_bitmask(bitmask[rows], n_vocab).to(scores.device)
            scores[rows] = scores[rows].masked_fill(~allowed, float("-inf"))
        if complete:
            end = torch.full_like(scores[complete], float("-inf"))
            end[:, self.eos] = 0.0
            scores[complete] = end
        return scores
