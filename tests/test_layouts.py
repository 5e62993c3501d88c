"""The same data, in every layout and file type users bring, becomes the same training examples."""

import csv
import json

import pytest
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.data.records import load_examples
from tunesmith.errors import UserError
from tunesmith.run import train

PAIRS = [
    ("When was it signed?", "1999-03-03"),
    ("Due date of invoice 12?", "2001-12-24"),
    ("Convert: 5 May 1960", "1960-05-05"),
    ("Her last day?", "2030-01-31"),
] * 4
SYSTEM = "Answer with an ISO date."


def layouts() -> dict[str, list[dict]]:
    def msgs(q, a):
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ]

    return {
        "messages": [{"messages": msgs(q, a)} for q, a in PAIRS],
        "sharegpt": [
            {
                "conversations": [
                    {"from": "system", "value": SYSTEM},
                    {"from": "human", "value": q},
                    {"from": "gpt", "value": a},
                ]
            }
            for q, a in PAIRS
        ],
        "alpaca": [{"system": SYSTEM, "instruction": q, "input": "", "output": a} for q, a in PAIRS],
        "prompt_completion": [
            {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], "completion": a}
            for q, a in PAIRS
        ],
        "preference": [
            {
                "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                "chosen": a,
                "rejected": "no idea",
            }
            for q, a in PAIRS
        ],
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_all_formats(tmp_path) -> dict[str, str]:
    """name -> path of the same conversations in each layout and file type."""
    from datasets import Dataset

    out = {}
    for name, rows in layouts().items():
        out[f"{name}.jsonl"] = str(write_jsonl(tmp_path / f"{name}.jsonl", rows))
    out["messages.json"] = str(tmp_path / "messages.json")
    (tmp_path / "messages.json").write_text(json.dumps(layouts()["messages"], indent=1))
    out["keyed.json"] = str(tmp_path / "keyed.json")
    (tmp_path / "keyed.json").write_text(json.dumps({"version": 2, "data": layouts()["alpaca"]}))
    with (tmp_path / "alpaca.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["system", "instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(layouts()["alpaca"])
    out["alpaca.csv"] = str(tmp_path / "alpaca.csv")
    Dataset.from_list(layouts()["sharegpt"]).to_parquet(str(tmp_path / "sharegpt.parquet"))
    out["sharegpt.parquet"] = str(tmp_path / "sharegpt.parquet")
    Dataset.from_list(layouts()["messages"]).save_to_disk(str(tmp_path / "saved"))
    out["saved dataset"] = str(tmp_path / "saved")
    return out


def test_every_layout_and_file_type_gives_the_same_conversations(tmp_path):
    reference = [e.messages for e in load_examples(write_jsonl(tmp_path / "ref.jsonl", layouts()["messages"]))]
    for name, path in write_all_formats(tmp_path).items():
        examples = load_examples(path)
        assert [e.messages for e in examples] == reference, name


def test_same_data_in_each_layout_trains_to_the_same_loss(tmp_path, tiny_model_dir):
    finals = {}
    for name, path in write_all_formats(tmp_path).items():
        run = name.replace(" ", "-").replace(".", "-")
        cfg = write_config(
            tmp_path / f"{run}.yaml",
            tiny_model_dir,
            {"train": path, "val": path},
            tmp_path / "runs",
            name=run,
            train={"max_steps": 4, "batch_size": 4, "lr": 1e-2},
        )
        train(load_config(cfg), quiet=True)
        finals[name] = [r["loss"] for r in read_jsonl(tmp_path / "runs" / run / "metrics.jsonl")]
    first = next(iter(finals.values()))
    assert first[-1] < first[0]
    for name, losses in finals.items():
        assert losses == pytest.approx(first, rel=1e-6), name


def test_column_mapping_and_explicit_format(tmp_path):
    rows = [{"question": q, "answer": a, "id": i} for i, (q, a) in enumerate(PAIRS)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(UserError, match=r"qa.jsonl:1: unknown layout \(keys: answer, id, question\)"):
        load_examples(path)
    examples = load_examples(path, columns={"prompt": "question", "completion": "answer"})
    assert examples[0].messages == [
        {"role": "user", "content": PAIRS[0][0]},
        {"role": "assistant", "content": PAIRS[0][1]},
    ]
    text = load_examples(write_jsonl(tmp_path / "t.jsonl", [{"text": "plain words", "prompt": "p"}]), fmt="text")
    assert text[0].text == "plain words" and text[0].messages is None


def test_preference_keeps_both_sides(tmp_path):
    [ex] = load_examples(write_jsonl(tmp_path / "p.jsonl", layouts()["preference"][:1]))
    assert ex.layout == "preference"
    assert ex.messages[-1]["content"] == "1999-03-03" and ex.rejected[-1]["content"] == "no idea"
    assert ex.messages[:-1] == ex.rejected[:-1]


def test_openai_dpo_records_read_as_the_same_pairs(tmp_path):
    """OpenAI's DPO file format gives the pairs the `preference` layout gives, tools kept."""
    ours = load_examples(write_jsonl(tmp_path / "p.jsonl", layouts()["preference"]))
    theirs = [
        {
            "input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]},
            "preferred_output": [{"role": "assistant", "content": a}],
            "non_preferred_output": [{"role": "assistant", "content": "no idea"}],
        }
        for q, a in PAIRS
    ]
    read = load_examples(write_jsonl(tmp_path / "o.jsonl", theirs))
    assert [(e.messages, e.rejected, e.layout) for e in read] == [(e.messages, e.rejected, e.layout) for e in ours]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    theirs[0]["input"]["tools"] = [tool]
    assert load_examples(write_jsonl(tmp_path / "t.jsonl", theirs[:1]))[0].tools == [tool]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"conversations": [{"from": "robot", "value": "x"}]}], "conversations[0].from 'robot' not allowed"),
        ([{"instruction": "i", "output": 5}], "'output' must be a string"),
        ([{"prompt": "p", "chosen": "a"}], "missing 'completion'"),
        ([{"text": ""}], "'text' is empty"),
        (
            [
                {
                    "input": {"messages": [{"role": "user", "content": "q"}]},
                    "preferred_output": [{"role": "assistant", "content": "a"}],
                }
            ],
            "missing 'non_preferred_output'",
        ),
        (
            [
                {
                    "input": {"messages": [{"role": "user", "content": "q"}]},
                    "preferred_output": "a",
                    "non_preferred_output": "b",
                }
            ],
            "'preferred_output' must be a list of assistant messages",
        ),
    ],
)
def test_layout_problems_are_located(tmp_path, rows, message):
    with pytest.raises(UserError) as e:
        load_examples(write_jsonl(tmp_path / "x.jsonl", rows))
    assert str(e.value).startswith(f"{tmp_path / 'x.jsonl'}:1: ") and message in str(e.value)


def test_json_csv_and_saved_dataset_locations(tmp_path):
    (tmp_path / "a.json").write_text('[{"text": "ok"},\n {"text": 3}]')
    with pytest.raises(UserError, match=r"a.json\[1\]: 'text' must be a string"):
        load_examples(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('[{"text": "ok"},\n {"text": }]')
    with pytest.raises(UserError, match=r"b.json:2: invalid JSON"):
        load_examples(tmp_path / "b.json")
    (tmp_path / "c.csv").write_text("prompt,completion\nq1,a1\nq2,a2,extra\nq3,\n")
    with pytest.raises(UserError) as e:
        load_examples(tmp_path / "c.csv")
    assert str(e.value).splitlines() == [
        f"{tmp_path / 'c.csv'}:3: 1 more cells than the header has columns",
        f"{tmp_path / 'c.csv'}:4: 'completion' is empty: nothing to learn from",
    ]
    (tmp_path / "d.json").write_text('{"a": [{"text": "x"}], "b": [{"text": "y"}]}')
    with pytest.raises(UserError, match="needs `key:`"):
        load_examples(tmp_path / "d.json")
    assert load_examples(tmp_path / "d.json", key="b")[0].text == "y"


def test_skip_bad_records_and_report_them(tmp_path, tiny_model_dir, date_data):
    lines = date_data["train"].read_text().splitlines()
    lines[2] = "{broken"
    lines[7] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        {"train": bad, "val": date_data["val"]},
        tmp_path / "runs",
        train={"max_steps": 2},
    )
    with pytest.raises(UserError) as e:
        train(load_config(cfg), quiet=True)
    assert str(e.value).splitlines() == [
        f"{bad}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{bad}:8: no assistant turn to learn from",
    ]
    assert not (tmp_path / "runs").exists()
    summary = train(load_config(cfg, ["data.on_error=skip"]), quiet=True)
    assert summary["steps"] == 2


def test_hub_dataset_ids_are_read_from_the_cache_only(tmp_path):
    with pytest.raises(UserError, match="not a hub dataset in the local cache"):
        load_examples("some-org/not-a-cached-dataset")


def test_inspect_works_on_every_layout_and_highlights_trained_tokens(tmp_path, tiny_model_dir, tokenizer):
    from helpers import cli_here, cli_in_process

    from tunesmith.data.chat import encode_chat
    from tunesmith.report.data_inspection import masked_preview

    for i, (name, path) in enumerate(write_all_formats(tmp_path).items()):
        out = tmp_path / f"{name}.json"
        args = [
            "data",
            "inspect",
            path,
            "--model",
            str(tiny_model_dir),
            "--json",
            str(out),
            "--png",
            str(tmp_path / "h.png"),
        ]
        if i == 0:  # through `main` once (exit code, stdout), the other layouts through the Typer app
            result = cli_here(args, tmp_path)
            assert result.returncode == 0, (name, result.stderr)
            stdout = result.stdout
        else:
            result = cli_in_process(args)
            assert result.exit_code == 0, (name, result.output)
            stdout = result.stdout
        assert "16 valid records, 0 with problems" in stdout and "1999-03-03<|im_end|>" in stdout
        assert json.loads(out.read_text())["records"] == 16
    assert (tmp_path / "h.png").stat().st_size > 5000
    enc = encode_chat(tokenizer, load_examples(write_all_formats(tmp_path)["messages.jsonl"])[0].messages, 512)
    preview = masked_preview(tokenizer, enc.input_ids, enc.labels)
    green = [preview.plain[s.start : s.end] for s in preview.spans if s.style == "bold green"]
    assert green == ["1999-03-03<|im_end|>"]


def test_inspect_lists_every_problem_and_exits_2(tmp_path, tiny_model_dir):
    from helpers import cli_here

    rows = layouts()["messages"][:3]
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n{oops\n" + json.dumps({"question": 1}) + "\n")
    result = cli_here(["data", "inspect", str(path), "--model", str(tiny_model_dir)], tmp_path)
    assert result.returncode == 2
    assert f"problem: {path}:2: invalid JSON" in result.stdout and f"problem: {path}:3: unknown layout" in result.stdout
