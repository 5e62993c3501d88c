"""Reasoning traces: read from every form users have them, trained or not as `train_on_reasoning`
says, kept out of what is scored, and returned by the server as `reasoning_content`."""

import json
import random

import pytest
from helpers import CHATML, build_tokenizer, cli_env, read_jsonl, start_server, write_config

from tunesmith.data.chat import IGNORE, encode_chat, render
from tunesmith.data.layouts import to_example
from tunesmith.data.reasoning import Thought, split_reply, split_stream

Q, R, A = "When was it signed?", "The date is in the text; the year comes first.", "1999-03-03"
# A template that renders `reasoning_content` itself, as Qwen 3's does (without its newlines)
REASONING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% if m['reasoning_content'] %}{{ '<think>' + m['reasoning_content'] + '</think>' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
    "'<|im_end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def forms() -> dict[str, dict]:
    user = {"role": "user", "content": Q}
    return {
        "reasoning_content": {"messages": [user, {"role": "assistant", "content": A, "reasoning_content": R}]},
        "reasoning": {"messages": [user, {"role": "assistant", "content": A, "reasoning": R}]},
        "reasoning part": {
            "messages": [
                user,
                {"role": "assistant", "content": [{"type": "reasoning", "text": R}, {"type": "text", "text": A}]},
            ]
        },
        "thinking part": {
            "messages": [
                user,
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": R}, {"type": "output_text", "text": A}],
                },
            ]
        },
        "<think> block": {"messages": [user, {"role": "assistant", "content": f"<think>\n{R}\n</think>\n\n{A}"}]},
        "sharegpt <think>": {
            "conversations": [{"from": "human", "value": Q}, {"from": "gpt", "value": f"<think>{R}</think>{A}"}]
        },
    }


def trained_text(tokenizer, enc) -> str:
    return tokenizer.decode([i for i, label in zip(enc.input_ids, enc.labels) if label != IGNORE])


@pytest.mark.parametrize("name", list(forms()))
def test_every_form_of_reasoning_is_one_trace(name, tokenizer):
    example = to_example(forms()[name], "x:1")
    assert example.messages[-1] == {"role": "assistant", "content": A, "reasoning": R}
    with_it = encode_chat(tokenizer, example.messages, 512, train_reasoning=True)
    without = encode_chat(tokenizer, example.messages, 512, train_reasoning=False)
    assert with_it.input_ids == without.input_ids  # the model reads the reasoning either way
    assert trained_text(tokenizer, with_it) == f"<think>\n{R}\n</think>\n\n{A}<|im_end|>"
    assert trained_text(tokenizer, without) == f"{A}<|im_end|>"
    reasoning_ids = [i for i, r in zip(with_it.input_ids, with_it.reasoning) if r]
    assert tokenizer.decode(reasoning_ids) == f"<think>\n{R}\n</think>\n\n"
    assert all(label == IGNORE for label, r in zip(without.labels, without.reasoning) if r)


def test_a_template_that_renders_reasoning_content_gets_it(tokenizer):
    native = build_tokenizer(REASONING_TEMPLATE)
    messages = to_example(forms()["<think> block"], "x:1").messages
    assert (
        render(native, messages)
        == f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n<think>{R}</think>{A}<|im_end|>\n"
    )
    enc = encode_chat(native, messages, 512, train_reasoning=False)
    assert trained_text(native, enc) == f"{A}<|im_end|>"
    assert trained_text(native, encode_chat(native, messages, 512)) == f"<think>{R}</think>{A}<|im_end|>"
    # a template that knows no reasoning gets the documented default block
    assert render(tokenizer, messages).endswith(f"<|im_start|>assistant\n<think>\n{R}\n</think>\n\n{A}<|im_end|>\n")
    assert CHATML == tokenizer.chat_template


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"messages": [{"role": "user", "content": Q, "reasoning_content": R}, {"role": "assistant", "content": A}]},
            "messages[0]: only assistant turns carry reasoning",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "reasoning", "text": R}, {"type": "text", "text": Q}]},
                    {"role": "assistant", "content": A},
                ]
            },
            "messages[0]: only assistant turns carry reasoning",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": Q},
                    {"role": "assistant", "content": f"<think>{R}</think>{A}", "reasoning_content": R},
                ]
            },
            "messages[1]: reasoning given twice",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": Q},
                    {"role": "assistant", "content": A, "reasoning_content": ["not", "text"]},
                ]
            },
            "messages[1].reasoning_content must be a string, got list",
        ),
    ],
)
def test_reasoning_problems_name_the_turn(record, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_example(record, "x:1")


def test_the_answer_is_scored_not_the_reasoning():
    from tunesmith.eval.metrics import contains_answer
    from tunesmith.eval.task import TaskPrompts, reference_turn, score_replies

    example = to_example(forms()["reasoning"], "x:1")
    context, turn = reference_turn(example)
    task = TaskPrompts([example] * 2, [context] * 2, [turn] * 2, [None] * 2)
    assert task.references == [A, A]  # the reference is the answer of a reasoning turn
    replies = [f"<think>\nmaybe 2000-01-01\n</think>\n\n{A}", f"<think>\nsurely {A}\n</think>\n\n2000-01-01"]
    scores = score_replies(task, replies, None, None)
    assert scores["exact_match"]["mean"] == 0.5  # the first right, the second wrong despite its reasoning
    from tunesmith.data.reasoning import answer_of

    assert not contains_answer(answer_of(replies[1]), [A]) and contains_answer(replies[1], [A])


def test_streamed_reasoning_splits_as_the_whole_reply_does():
    rng = random.Random(0)
    texts = [
        f"<think>\n{R}\n</think>\n\n{A}",
        A,
        "  <thi",
        "<think>never closed",
        "<think>\nx\n</think>",
        "<th ink> a",
        "\n\n<think>\n\n a\nb \n</think>  \n c\n",
        "<think></think>ok",
    ]
    for text in texts:
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(6, len(text) - 1))))
            pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])] + [None]
            out = list(split_stream(pieces))
            assert out[-1] is None
            thought = "".join(x for x in out if isinstance(x, Thought)) or None
            answer = "".join(x for x in out[:-1] if not isinstance(x, Thought))
            assert (thought, answer) == split_reply(text), (text, pieces)


@pytest.fixture(scope="module")
def reasoning_run(tmp_path_factory, tiny_model_dir):
    """The tiny model fine-tuned until it answers the question with the reasoning, then the answer."""
    from tunesmith.config import load_config
    from tunesmith.run import train

    tmp = tmp_path_factory.mktemp("reasoning")
    data = tmp / "train.jsonl"
    data.write_text(json.dumps(forms()["reasoning_content"]) + "\n")
    cfg = write_config(
        tmp / "c.yaml",
        tiny_model_dir,
        {"train": data, "val": data},
        tmp / "runs",
        name="thinks",
        adapter={"type": "none"},
        train={"max_steps": 60, "batch_size": 1, "lr": 3e-3, "precision": "fp32", "log_every": 10, "warmup": 0},
    )
    train(load_config(cfg), quiet=True)
    assert read_jsonl(tmp / "runs" / "thinks" / "metrics.jsonl")[-1]["loss"] < 0.05
    return tmp / "runs" / "thinks"


def test_serve_returns_the_reasoning_apart_from_the_answer(tmp_path, reasoning_run):
    openai = pytest.importorskip("openai")
    line, proc = start_server(
        ["serve", str(reasoning_run), "--port", "0", "--precision", "fp32", "--max-tokens", "128"],
        tmp_path,
        cli_env(tmp_path),
    )
    try:
        client = openai.OpenAI(base_url=line.split(" at ")[1].split()[0], api_key="none", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": Q}], temperature=0)
        message = reply.choices[0].message
        assert message.content == A
        assert message.model_extra["reasoning_content"] == R
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": Q}], temperature=0, stream=True
        )
        thought, answer = "", ""
        for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta
                thought += (delta.model_extra or {}).get("reasoning_content") or ""
                answer += delta.content or ""
        assert (thought, answer) == (R, A)
        # the reasoning goes back in a later turn as the client got it
        again = client.chat.completions.create(
            model=model,
            temperature=0,
            max_tokens=4,
            messages=[
                {"role": "user", "content": Q},
                {"role": "assistant", "content": A, "reasoning_content": R},
                {"role": "user", "content": Q},
            ],
        )
        assert again.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("train_reasoning, style", [(True, "bold magenta"), (False, "dim magenta")])
def test_inspect_shows_the_reasoning_apart_from_the_answer(tmp_path, tokenizer, train_reasoning, style):
    from rich.console import Console

    from tunesmith.report.data_inspection import inspect, masked_preview

    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps(forms()["reasoning part"])
        + "\n"
        + json.dumps({"messages": forms()["reasoning"]["messages"][:1] + [{"role": "assistant", "content": A}]})
        + "\n"
    )
    console = Console(record=True, width=300)
    stats = inspect(str(path), tokenizer, console, train_reasoning=train_reasoning, show=0)
    enc = encode_chat(
        tokenizer, to_example(forms()["reasoning part"], "x").messages, 512, train_reasoning=train_reasoning
    )
    assert stats["reasoning_records"] == 1 and stats["reasoning_tokens"] == sum(enc.reasoning)
    assert stats["trained_per_record"][0] == sum(label != IGNORE for label in enc.labels)
    shown = console.export_text()
    assert (
        "reasoning: 1 record, " in shown
        and ("trained" if train_reasoning else "not trained (train_on_reasoning: false)") in shown
    )
    text = masked_preview(tokenizer, enc.input_ids, enc.labels, enc.reasoning)
    by_style = {}
    for span in text.spans:
        by_style[str(span.style)] = by_style.get(str(span.style), "") + text.plain[span.start : span.end]
    assert by_style[style] == f"<think>\n{R}\n</think>\n\n"
    assert by_style["bold green"] == f"{A}<|im_end|>"
