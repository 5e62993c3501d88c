"""Tool-calling data: OpenAI's chat format with tools (and ShareGPT's function_call/observation
turns) read and checked, rendered through the template's own tool support or the fallback, the
loss on the calls and their end-of-turn token only, and replies parsed back into the same calls."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.chat import encode_chat
from tunesmith.data.layouts import to_example
from tunesmith.data.tool_format import calls_text, parse_reply

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}


def call(call_id: str, name: str, **arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


RECORD = {
    "tools": [WEATHER, TIME],
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, UNTRAINED", "weight": 0},
        {"role": "user", "content": "Weather in Oslo and the time in Tokyo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("c1", "get_weather", city="Oslo"), call("c2", "get_time", zone="Asia/Tokyo")],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "TOOLREPLY 4 degrees"},
        {"role": "tool", "tool_call_id": "c2", "content": "TOOLREPLY 21:04"},
        {"role": "assistant", "content": "4 degrees in Oslo; 21:04 in Tokyo."},
    ],
}


def trained_text(tokenizer, example) -> list[str]:
    from test_chat_mask import trained_text as runs

    return runs(tokenizer, encode_chat(tokenizer, example.messages, 4096, tools=example.tools))


def test_the_loss_covers_the_calls_and_their_end_of_turn_only(tokenizer):
    example = to_example(RECORD, "f.jsonl:1")
    runs = trained_text(tokenizer, example)
    eos = tokenizer.eos_token
    assert runs == [calls_text(example.messages[4]["tool_calls"]) + eos, "4 degrees in Oslo; 21:04 in Tokyo." + eos]
    full = tokenizer.decode(encode_chat(tokenizer, example.messages, 4096, tools=example.tools).input_ids)
    assert (
        '"name": "get_weather"' in full and "TOOLREPLY 4 degrees" in full and "UNTRAINED" in full
    )  # shown, not trained


def test_fallback_rendering_round_trips_through_the_parser():
    calls = [call("a", "get_weather", city="Oslo", unit="C"), call("b", "get_time", zone="Europe/Oslo")]
    for chosen in (calls[:1], calls):  # one call, parallel calls
        reply = parse_reply("Checking.\n" + calls_text(chosen), {"get_weather", "get_time"})
        assert reply.content == "Checking." and reply.problem is None
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply.calls] == [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in chosen
        ]


@pytest.mark.parametrize(
    "text, problem",
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', "unclosed"),
        ('<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>', "not a JSON object"),
        ('<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>', "not among the tools"),
        ("<tool_call>\nnot json\n</tool_call>", "not JSON"),
    ],
)
def test_a_reply_that_does_not_parse_stays_text(text, problem):
    reply = parse_reply(text, {"get_weather"})
    assert reply.calls == [] and reply.content == text and problem in reply.problem


def test_a_bare_json_call_is_read_as_a_call():
    reply = parse_reply('{"name": "get_time", "parameters": {"zone": "UTC"}}', {"get_time"})
    assert [c["function"]["name"] for c in reply.calls] == ["get_time"] and json.loads(
        reply.calls[0]["function"]["arguments"]
    ) == {"zone": "UTC"}


NATIVE = (
    "{% if tools %}<|im_start|>system\nTOOLS {{ tools | map(attribute='function') | map(attribute='name') | "
    "join(',') }}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments} | "
    "tojson }}"
    "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_takes_tools_renders_them_itself():
    from helpers import build_tokenizer

    tok = build_tokenizer(chat_template=NATIVE)
    example = to_example(RECORD, "f.jsonl:1")
    runs = trained_text(tok, example)
    assert runs[0].startswith('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    assert runs[0].endswith(tok.eos_token) and len(runs) == 2
    text = tok.decode(encode_chat(tok, example.messages, 4096, tools=example.tools).input_ids)
    assert "TOOLS get_weather,get_time" in text and "You can call the functions" not in text


def test_sharegpt_function_call_and_observation_turns():
    record = {
        "tools": json.dumps([WEATHER["function"]]),
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
            {"from": "observation", "value": "4 degrees"},
            {"from": "gpt", "value": "It is 4 degrees."},
        ],
    }
    example = to_example(record, "f.jsonl:1")
    assert [m["role"] for m in example.messages] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(example.messages[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert example.messages[2]["tool_call_id"] == example.messages[1]["tool_calls"][0]["id"]


def bad(change) -> dict:
    record = json.loads(json.dumps(RECORD))
    change(record)
    return record


@pytest.mark.parametrize(
    "record, message",
    [
        (
            bad(lambda r: r["messages"].insert(2, {"role": "tool", "tool_call_id": "c9", "content": "x"})),
            "answers no call",
        ),
        (bad(lambda r: r["messages"][5].update(tool_call_id="c7")), "answers no open call"),
        (
            bad(lambda r: r["messages"][4]["tool_calls"][0]["function"].update(name="launch")),
            "'launch', which is not in 'tools'",
        ),
        (
            bad(lambda r: r["messages"][4]["tool_calls"][0]["function"].update(arguments="[1, 2]")),
            "must be a JSON object",
        ),
        (bad(lambda r: r["messages"][4]["tool_calls"][0]["function"].update(arguments="{city")), "is not valid JSON"),
        (bad(lambda r: r["messages"][2].update(weight=2)), "weight must be 0 or 1"),
        (bad(lambda r: r["messages"][1].update(weight=0)), "only assistant turns carry a weight"),
        (
            bad(
                lambda r: r["tools"][0]["function"].update(
                    parameters={"type": "object", "properties": {"city": {"type": "strin"}}}
                )
            ),
            "not a valid JSON schema",
        ),
        (bad(lambda r: r.pop("tools")), "the record has no 'tools'"),
    ],
)
def test_bad_tool_records_are_refused_naming_the_field(record, message):
    with pytest.raises(ValueError, match=message):
        to_example(record, "f.jsonl:1")


def test_bad_tool_records_name_file_and_line_and_skip_counts_them(tmp_path):
    from tunesmith.data.records import load_source
    from tunesmith.errors import UserError

    path = tmp_path / "calls.jsonl"
    rows = [RECORD, bad(lambda r: r["messages"][4]["tool_calls"][0]["function"].update(name="launch")), RECORD]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError, match=rf"{path}:2: messages\[4\]\.tool_calls\[0\] calls 'launch'"):
        load_source(str(path))
    loaded = load_source(str(path), on_error="skip")
    assert len(loaded.examples) == 2 and len(loaded.problems) == 1


def block(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


EXPECTED = {
    "role": "assistant",
    "content": "",
    "tool_calls": [call("1", "get_weather", city="Oslo", unit="C"), call("2", "get_time", zone="Asia/Tokyo")],
}


@pytest.mark.parametrize(
    "reply, scores",
    [
        # both calls right, in the other order, keys in another order
        (
            block("get_time", zone="Asia/Tokyo") + "\n" + block("get_weather", unit="C", city="Oslo"),
            {
                "tool_call_rate": 1,
                "tool_name_accuracy": 1,
                "tool_call_exact": 1,
                "tool_argument_accuracy": 1,
                "tool_args_valid_json": 1,
                "tool_args_schema_valid": 1,
            },
        ),
        # the weather call with a wrong unit, no time call: 1 of 3 arguments wrong, 1 missing
        (
            block("get_weather", city="Oslo", unit="F"),
            {
                "tool_call_rate": 1,
                "tool_name_accuracy": 0,
                "tool_call_exact": 0,
                "tool_argument_accuracy": 1 / 3,
                "tool_args_valid_json": 1,
                "tool_args_schema_valid": 1,
            },
        ),
        # a schema-invalid argument (unit not in its enum; zone missing)
        (
            block("get_weather", city="Oslo", unit="K") + "\n" + block("get_time", tz="UTC"),
            {
                "tool_call_rate": 1,
                "tool_name_accuracy": 1,
                "tool_call_exact": 0,
                "tool_argument_accuracy": 1 / 3,
                "tool_args_valid_json": 1,
                "tool_args_schema_valid": 0,
            },
        ),
        # one block broken: the reply is text, no calls; half its blocks hold JSON arguments
        (
            block("get_weather", city="Oslo", unit="C")
            + '\n<tool_call>\n{"name": "get_time", "arguments": {zone}\n</tool_call>',
            {
                "tool_call_rate": 0,
                "tool_name_accuracy": 0,
                "tool_call_exact": 0,
                "tool_argument_accuracy": 0,
                "tool_args_valid_json": 0.5,
            },
        ),
        (
            "It is sunny.",
            {"tool_call_rate": 0, "tool_name_accuracy": 0, "tool_call_exact": 0, "tool_argument_accuracy": 0},
        ),
    ],
)
def test_tool_metrics_against_hand_computed_values(reply, scores):
    from tunesmith.eval.tool_metrics import tool_scores

    assert tool_scores(reply, EXPECTED, [WEATHER, TIME]) == pytest.approx(scores)


def test_abstention_where_no_call_was_expected():
    from tunesmith.eval.tool_metrics import tool_scores

    answer = {"role": "assistant", "content": "Hello!"}
    assert tool_scores("Hello!", answer, [WEATHER]) == {"tool_abstention": 1.0}
    assert tool_scores(block("get_weather", city="Oslo"), answer, [WEATHER]) == {
        "tool_abstention": 0.0,
        "tool_args_valid_json": 1.0,
        "tool_args_schema_valid": 1.0,
    }


def test_evaluation_prompts_with_the_tools_and_scores_the_calls(tiny_model_dir, tmp_path):
    import torch

    from tunesmith.eval.task import evaluate_task
    from tunesmith.model.load import load_for_inference

    model, tok = load_for_inference(str(tiny_model_dir), dtype=torch.float32)
    record = {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call("1", "get_weather", city="Oslo")]},
        ],
    }
    chat = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "tools": [WEATHER],
    }
    examples = [to_example(record, "t:1"), to_example(chat, "t:2")]
    result = evaluate_task(
        model, tok, examples, label="tiny", max_new_tokens=8, latency_samples=1, predictions_path=tmp_path / "p.jsonl"
    )
    for name in ("tool_call_rate", "tool_name_accuracy", "tool_call_exact", "tool_abstention"):
        assert set(result["scores"][name]) >= {"mean", "lo", "hi", "n"}, name
    assert result["scores"]["tool_call_rate"]["n"] == 1 and result["scores"]["tool_abstention"]["n"] == 1
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows[0]["reference"] == calls_text(examples[0].messages[1]["tool_calls"])
    from tunesmith.data.chat import prompt_ids

    prompt = tok.decode(prompt_ids(tok, examples[0].messages[:1], examples[0].tools))
    assert '"name": "get_weather"' in prompt  # the tools are in the prompt


def test_generate_refuses_a_bad_tools_file_in_one_line(tmp_path, tiny_model_dir):
    from helpers import cli_here

    bad = tmp_path / "tools.json"
    bad.write_text(json.dumps([{"type": "function", "function": {"name": "no spaces allowed"}}]))
    result = cli_here(["generate", str(tiny_model_dir), "--prompt", "hi", "--tools", str(bad)], tmp_path)
    assert result.returncode == 2 and f"{bad}: tools[0].function.name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    good = tmp_path / "good.json"
    good.write_text(json.dumps([WEATHER]))
    result = cli_here(
        ["generate", str(tiny_model_dir), "--prompt", "hi", "--tools", str(good), "--max-new-tokens", "4"], tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_chat_with_tools_asks_for_each_result_and_answers_with_it(tmp_path, tiny_model_dir):
    """A tiny model taught one tool conversation (a call; after its result, an answer): `chat`
    keeps its reply as the call, asks for the result as a tool turn, and answers with it."""
    from helpers import write_config

    from tunesmith.chat_session import chat_loop
    from tunesmith.config import load_config
    from tunesmith.eval.generate import Sampling
    from tunesmith.model.load import load_for_inference
    from tunesmith.run import train

    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"type": "object", "properties": {"x": {"enum": ["a", "b"]}}, "required": ["x"]},
            },
        }
    ]
    record = {
        "tools": tools,
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [call("c1", "f", x="b")]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ],
    }
    splits = {}
    for split, copies in (("train", 16), ("val", 2)):
        splits[split] = tmp_path / f"{split}.jsonl"
        splits[split].write_text((json.dumps(record) + "\n") * copies)
    cfg = write_config(
        tmp_path / "t.yaml",
        tiny_model_dir,
        splits,
        tmp_path / "runs",
        adapter={"type": "none"},
        data={"train": [{"path": str(splits["train"])}], "val": str(splits["val"]), "max_length": 512},
        train={"max_steps": 60, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "log_every": 20, "warmup": 0},
    )
    train(load_config(cfg), quiet=True)
    model, tok = load_for_inference(str(tmp_path / "runs" / "tiny"))
    asked = []
    lines = iter(["go", "42", "/exit"])

    def read(prompt: str) -> str:
        asked.append(prompt)
        return next(lines)

    history = chat_loop(model, tok, Sampling(max_new_tokens=80), read=read, tools=tools)
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in history[1]["tool_calls"]] == [
        ("f", {"x": "b"})
    ]
    assert asked[1] == 'result of f({"x": "b"})> ' and history[2] == {
        "role": "tool",
        "tool_call_id": history[1]["tool_calls"][0]["id"],
        "content": "42",
    }
    assert history[3]["content"] == "It is 42."
