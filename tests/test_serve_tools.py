"""Tool calling through `tunesmith serve` with the official openai client, unmodified: calls come
back as `message.tool_calls` (whole) and as tool-call deltas (streamed), the tool's result goes
back in the next turn, and bad tool requests get OpenAI 400s naming the parameter."""

import json
import shutil

import pytest
from test_serve import KEY, running_server

openai = pytest.importorskip("openai")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Oslo", "Rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "clock",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET"]}},
                "required": ["zone"],
                "additionalProperties": False,
            },
        },
    },
]
ASK = [{"role": "user", "content": "Weather in Oslo?"}]
MODEL = None  # the served base's name, set by the fixture


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    """The tiny model with a longer context: the tiny tokenizer spells the tool list out in ~400 tokens."""
    folder = tmp_path_factory.mktemp("serve-tools") / "tiny-long"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    for server in running_server(folder.parent, folder, "--max-tokens", "160"):
        global MODEL
        MODEL = server["base"]
        yield openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=120)


def test_a_required_call_comes_back_as_tool_calls_whole_and_streamed(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("lookup", "clock")
    arguments = json.loads(call.function.arguments)
    assert arguments in ({"city": "Oslo"}, {"city": "Rome"}, {"zone": "UTC"}, {"zone": "CET"})

    named = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        max_tokens=150,
        tool_choice={"type": "function", "function": {"name": "clock"}},
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["clock"]

    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
        stream=True,
        temperature=0,
    )
    names, pieces, reasons = {}, {}, []
    for chunk in stream:
        delta = chunk.choices[0].delta
        for d in delta.tool_calls or []:
            if d.function.name:
                names[d.index] = (d.id, d.function.name)
            pieces[d.index] = pieces.get(d.index, "") + (d.function.arguments or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert reasons[-1] == "tool_calls"
    assert [(n, json.loads(pieces[i])) for i, (_, n) in names.items()] == [
        (call.function.name, arguments)
    ]  # greedy: as whole


def test_the_tool_result_goes_back_in_the_next_turn(client):
    first = (
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=150
        )
        .choices[0]
        .message
    )
    history = ASK + [
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "4 degrees"},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)


@pytest.mark.parametrize(
    "change, param",
    [
        (dict(tool_choice={"type": "function", "function": {"name": "launch"}}), "tool_choice"),
        (
            dict(tools=[{"type": "function", "function": {"name": "bad name!", "parameters": {"type": "object"}}}]),
            "tools",
        ),
        (
            dict(
                tools=[
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}},
                        },
                    }
                ]
            ),
            "tools",
        ),
        (dict(messages=ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "4"}]), "messages"),
        (
            dict(
                messages=ASK
                + [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "launch", "arguments": "{}"}}
                        ],
                    }
                ]
            ),
            "messages",
        ),
        (
            dict(
                messages=ASK
                + [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "[1]"}}
                        ],
                    }
                ]
            ),
            "messages",
        ),
        (dict(tools=None, tool_choice="required"), "tool_choice"),
    ],
)
def test_bad_tool_requests_get_a_400_naming_the_parameter(client, change, param):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4, **change}
    if body["tools"] is None:
        del body["tools"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**body)
    assert e.value.body["param"] == param, e.value.body
    assert client.models.list().data  # still serving


def streamed(text: str, cut: int, choice="auto"):
    """ToolReplies' chunks for `text` arriving in pieces of `cut` characters."""
    from tunesmith.serve.generation import Finished
    from tunesmith.serve.tool_replies import ToolReplies

    pieces = [text[i : i + cut] for i in range(0, len(text), cut)] + [Finished("stop", 9)]
    chunks = list(ToolReplies(TOOLS, choice, True).deltas(iter(pieces)))
    content = "".join(d.get("content", "") for d, _, _ in chunks)
    calls: dict[int, list] = {}
    for d, _, _ in chunks:
        for c in d.get("tool_calls", []):
            entry = calls.setdefault(c["index"], ["", ""])
            entry[0] += c["function"].get("name", "")
            entry[1] += c["function"].get("arguments", "")
    return content, [(n, json.loads(a)) for n, a in calls.values()], chunks[-1][1]


@pytest.mark.parametrize("cut", [1, 3, 7, 100])
def test_streamed_replies_match_whole_ones_however_the_text_arrives(cut):
    from tunesmith.data.tool_format import calls_text

    call = {"type": "function", "function": {"name": "lookup", "arguments": '{"city": "Rome"}'}}
    clock = {"type": "function", "function": {"name": "clock", "arguments": '{"zone": "UTC"}'}}
    assert streamed("It is sunny in Rome < 30 degrees.", cut) == ("It is sunny in Rome < 30 degrees.", [], "stop")
    content, calls, reason = streamed("Let me check.\n" + calls_text([call, clock]), cut)
    assert content.strip() == "Let me check." and calls == [("lookup", {"city": "Rome"}), ("clock", {"zone": "UTC"})]
    assert reason == "tool_calls"
    broken = '<tool_call>\n{"name": "lookup", "arguments": {"city"\n</tool_call>'
    assert streamed(broken, cut) == (broken, [], "stop")  # never a broken call
    assert streamed(calls_text([call]), cut, choice="none") == (calls_text([call]), [], "stop")


def test_a_system_turn_later_in_the_conversation_is_served(client):
    """OpenAI's API takes a system turn anywhere; training data keeps it first, a request need not."""
    history = ASK + [
        {"role": "assistant", "content": "Which unit?"},
        {"role": "system", "content": "Use Celsius."},
        {"role": "user", "content": "Celsius"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=history, max_tokens=2)
    assert isinstance(reply.choices[0].message.content, str)
