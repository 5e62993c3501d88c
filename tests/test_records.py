"""Every record is validated before training; errors name file:line and the problem."""

import json

import pytest

from tunesmith.data.records import load_examples
from tunesmith.errors import UserError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return p


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"messages": [', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role 'robot' not allowed"),
        (
            json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}),
            "content must be a string",
        ),
        (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant turn"),
        (json.dumps({"prompt": "p", "completion": ""}), "nothing to learn"),
        (json.dumps({"question": "q"}), "unknown layout"),
        (b'{"prompt": "\xff", "completion": "x"}', "invalid UTF-8"),
    ],
)
def test_bad_line_is_named_with_file_and_line(tmp_path, bad, message):
    p = write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), bad])
    with pytest.raises(UserError) as e:
        load_examples(p)
    assert str(e.value).startswith(f"{p}:3: ") and message in str(e.value)


def test_every_problem_is_listed_one_per_line_up_to_a_limit(tmp_path):
    p = write(tmp_path, ["{", json.dumps(GOOD), "{", "{"])
    with pytest.raises(UserError) as e:
        load_examples(p)
    assert [line.split(": ")[0] for line in str(e.value).splitlines()] == [f"{p}:1", f"{p}:3", f"{p}:4"]
    many = write(tmp_path, ["{"] * 25, name="many.jsonl")
    with pytest.raises(UserError) as e:
        load_examples(many)
    lines = str(e.value).splitlines()
    assert len(lines) == 21 and lines[19].startswith(f"{many}:20: ") and lines[20] == "... and 5 more problems"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="empty file"):
        load_examples(write(tmp_path, [""]))


def test_prompt_completion_becomes_a_chat_turn(tmp_path):
    [ex] = load_examples(write(tmp_path, [json.dumps({"prompt": "2+2?", "completion": "4"})]))
    assert ex.messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert ex.source.endswith("d.jsonl:1")
