"""Constrained decoding of tool calls: whatever the model would rather write, the reply parses as
a call whose arguments validate against the function's schema (random schemas of objects,
strings, numbers, integers, booleans, enums, arrays and required keys; a random tiny model).
Lengths are bounded (maxLength, maxItems, ranges, multipleOf), as a schema must be for any decoder
to finish within a token limit; the examples are the same on every machine (derandomized)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.tool_format import parse_reply
from tunesmith.eval.constrained import call_grammar, matcher

MAX_NEW_TOKENS = 200

leaves = st.one_of(
    st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
    st.tuples(st.integers(-50, 50), st.integers(0, 500)).map(
        lambda r: {"type": "integer", "minimum": r[0], "maximum": r[0] + r[1]}
    ),
    # decimals bounded by multipleOf (binary fractions: the validator divides in floating point, so
    # -2.49 is no multiple of 0.01 to it); a plain "number" lets a model write fraction digits without end
    st.tuples(st.integers(-50, 50), st.integers(1, 500), st.sampled_from([0.5, 0.25, 0.125])).map(
        lambda r: {"type": "number", "minimum": r[0], "maximum": r[0] + r[1], "multipleOf": r[2]}
    ),
    st.just({"type": "boolean"}),
    st.lists(st.text("abcxyz", min_size=1, max_size=4), min_size=1, max_size=4, unique=True).map(
        lambda xs: {"enum": xs}
    ),
)
values = st.one_of(leaves, leaves.map(lambda s: {"type": "array", "items": s, "maxItems": 3}))


@st.composite
def object_schemas(draw, depth: int = 0):
    names = draw(st.lists(st.text("abcdefgh_", min_size=1, max_size=6), max_size=4, unique=True))
    props = {n: draw(values if depth or not draw(st.booleans()) else object_schemas(depth=1)) for n in names}
    required = [n for n in names if draw(st.booleans())]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**tiny_shape(tokenizer, bos_token_id=1, initializer_range=0.5))  # (1: Llama's default)
    return LlamaForCausalLM(config).eval(), tokenizer


def constrained_reply(model, tokenizer, tools, prompt: list[int], name=None, parallel=False) -> str:
    """The reply under the call grammar, decoded by the generation engine as the server decodes it."""
    from tunesmith.generation.batch import generate_tokens
    from tunesmith.generation.sampling import RowGrammar, RowSettings

    grammar = RowGrammar(
        matcher(tokenizer, call_grammar(tools, name, parallel), model.config.vocab_size), tokenizer.eos_token_id
    )
    [out] = generate_tokens(
        model, [prompt], MAX_NEW_TOKENS, RowSettings(), frozenset({tokenizer.eos_token_id}), grammars=[grammar]
    )
    return tokenizer.decode(out, skip_special_tokens=True)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schemas=st.lists(object_schemas(), min_size=1, max_size=3), data=st.data())
def test_constrained_replies_are_schema_valid_calls(tiny, schemas, data):
    from jsonschema import Draft202012Validator

    model, tok = tiny
    tools = [{"type": "function", "function": {"name": f"fn_{i}", "parameters": s}} for i, s in enumerate(schemas)]
    name = data.draw(st.sampled_from([None] + [t["function"]["name"] for t in tools]))
    prompt = data.draw(st.lists(st.integers(5, len(tok) - 1), min_size=1, max_size=12))
    reply = parse_reply(constrained_reply(model, tok, tools, prompt, name), {t["function"]["name"] for t in tools})
    assert reply.problem is None and len(reply.calls) == 1 and reply.content == "", reply
    called = reply.calls[0]["function"]
    assert name is None or called["name"] == name
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == called["name"])
    assert Draft202012Validator(schema).is_valid(json.loads(called["arguments"])), (schema, called)


def test_unconstrained_the_same_model_writes_no_call(tiny):
    """The constraint is what makes the call: the same model and prompt, decoded freely."""
    model, tok = tiny
    with torch.no_grad():
        out = model.generate(
            torch.tensor([[5, 6, 7]]),
            max_new_tokens=40,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    assert parse_reply(tok.decode(out[0, 3:], skip_special_tokens=True)).calls == []


def test_parallel_calls_end_in_complete_calls(tiny):
    model, tok = tiny
    tools = [
        {
            "type": "function",
            "function": {
                "name": "ping",
                "parameters": {
                    "type": "object",
                    "properties": {"host": {"enum": ["a", "b"]}},
                    "required": ["host"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    reply = parse_reply(constrained_reply(model, tok, tools, [5, 6, 7], parallel=True), {"ping"})
    assert reply.problem is None and 1 <= len(reply.calls) <= 8 and reply.content == ""


def test_constrained_and_free_rows_share_a_batch(tiny):
    """Rows under a grammar and rows without one decode together: each constrained row is a
    valid call, each free row the reply it gets alone."""
    from tunesmith.generation.batch import generate_tokens
    from tunesmith.generation.sampling import RowGrammar, RowSettings

    model, tok = tiny
    tools = [
        {
            "type": "function",
            "function": {
                "name": "ping",
                "parameters": {
                    "type": "object",
                    "properties": {"host": {"enum": ["a", "b"]}},
                    "required": ["host"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [5, 9, 14]]
    grammars = [
        RowGrammar(matcher(tok, call_grammar(tools), model.config.vocab_size), tok.eos_token_id) if i % 2 else None
        for i in range(len(prompts))
    ]
    eos = frozenset({tok.eos_token_id})
    together = generate_tokens(model, prompts, MAX_NEW_TOKENS, RowSettings(), eos, grammars=grammars)
    for prompt, grammar, out in zip(prompts, grammars, together):
        if grammar is None:
            with torch.no_grad():
                alone = model.generate(
                    torch.tensor([prompt]),
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )[0, len(prompt) :]
            assert out == alone.tolist()
        else:
            reply = parse_reply(tok.decode(out, skip_special_tokens=True), {"ping"})
            assert reply.problem is None and len(reply.calls) == 1, reply
