"""Files as other tools and OpenAI write them read as the twin records in tunesmith's own layouts.

Each fixture is shaped like the tool's documented examples (OpenAI's chat and preference files,
LLaMA-Factory's demo datasets and dataset_info.json, Axolotl's chat_template options, TRL's
KTO layout). A record is read right when it gives the same token ids and loss mask as its twin
written in the plain layout: that is what training sees.
"""

import json

import pytest
from helpers import cli_here, read_jsonl, write_config
from rich.console import Console

from tunesmith.config import load_config
from tunesmith.data.chat import IGNORE, encode_example
from tunesmith.data.records import load_source
from tunesmith.errors import UserError

QA = [
    ("When was it signed?", "1999-03-03"),
    ("Due date of invoice 12?", "2001-12-24"),
    ("Convert: 5 May 1960", "1960-05-05"),
    ("Her last day?", "2030-01-31"),
]
SYSTEM = "Answer with an ISO date."
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat(q, a, system=True):
    turns = [{"role": "system", "content": SYSTEM}] if system else []
    return turns + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def encoded(tokenizer, examples):
    return [
        (enc.input_ids, enc.labels) for enc in (encode_example(tokenizer, e, 4096, "all_assistant") for e in examples)
    ]


def trained(tokenizer, examples):
    return [sum(label != IGNORE for label in labels) for _, labels in encoded(tokenizer, examples)]


# name -> (their records, our twin records, the layout theirs is detected as)
def peers() -> dict[str, tuple[list[dict], list[dict], str]]:
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})
    return {
        "openai content parts": (
            [
                {
                    "messages": [
                        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                        {
                            "role": "user",
                            "content": [{"type": "input_text", "text": q[:6]}, {"type": "input_text", "text": q[6:]}],
                        },
                        {"role": "assistant", "content": [{"type": "output_text", "text": a}]},
                    ]
                }
                for q, a in QA
            ],
            [{"messages": chat(q, a)} for q, a in QA],
            "messages",
        ),
        "llamafactory value parts": (
            [
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "value": q}]},
                        {"role": "assistant", "content": [{"type": "text", "value": a}]},
                    ]
                }
                for q, a in QA
            ],
            [{"messages": chat(q, a, system=False)} for q, a in QA],
            "messages",
        ),
        "llamafactory dpo (sharegpt pairs)": (
            [
                {
                    "conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": q}],
                    "chosen": {"from": "gpt", "value": a},
                    "rejected": {"from": "gpt", "value": "no idea"},
                }
                for q, a in QA
            ],
            [{"prompt": chat(q, a)[:2], "chosen": a, "rejected": "no idea"} for q, a in QA],
            "preference",
        ),
        "messages pairs": (
            [
                {
                    "messages": chat(q, a)[:2],
                    "chosen": [{"role": "assistant", "content": a}],
                    "rejected": {"role": "assistant", "content": "no idea"},
                }
                for q, a in QA
            ],
            [{"prompt": chat(q, a)[:2], "chosen": a, "rejected": "no idea"} for q, a in QA],
            "preference",
        ),
        "trl implicit-prompt pairs": (
            [{"chosen": chat(q, a), "rejected": chat(q, "no idea")} for q, a in QA],
            [{"prompt": chat(q, a)[:2], "chosen": a, "rejected": "no idea"} for q, a in QA],
            "preference",
        ),
        "llamafactory kto (messages + label)": (
            [
                {"messages": [{"content": q, "role": "user"}, {"content": a, "role": "assistant"}], "label": i % 2 == 0}
                for i, (q, a) in enumerate(QA)
            ],
            [{"prompt": q, "completion": a, "label": i % 2 == 0} for i, (q, a) in enumerate(QA)],
            "messages",
        ),
        "sharegpt + kto_tag": (
            [
                {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], "kto_tag": i % 2 == 1}
                for i, (q, a) in enumerate(QA)
            ],
            [{"prompt": q, "completion": a, "label": i % 2 == 1} for i, (q, a) in enumerate(QA)],
            "sharegpt",
        ),
        "sharegpt tools, some '[]'": (
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Weather in Oslo?"},
                        {"from": "function_call", "value": call},
                        {"from": "observation", "value": '{"temp": 3}'},
                        {"from": "gpt", "value": "3 degrees."},
                    ],
                    "tools": json.dumps([WEATHER]),
                },
                {
                    "conversations": [{"from": "human", "value": QA[0][0]}, {"from": "gpt", "value": QA[0][1]}],
                    "tools": "[]",
                },
            ],
            [
                {
                    "messages": [
                        {"role": "user", "content": "Weather in Oslo?"},
                        {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [
                                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
                            ],
                        },
                        {"role": "tool", "content": '{"temp": 3}'},
                        {"role": "assistant", "content": "3 degrees."},
                    ],
                    "tools": [{"type": "function", "function": WEATHER}],
                },
                {"messages": chat(*QA[0], system=False)},
            ],
            "sharegpt",
        ),
        "loss_weight on every turn": (
            [
                {
                    "messages": [
                        {"role": "user", "content": q, "loss_weight": 0},
                        {"role": "assistant", "content": "hm", "loss_weight": 0},
                        {"role": "user", "content": "again", "loss_weight": 0.0},
                        {"role": "assistant", "content": a, "loss_weight": 1},
                    ]
                }
                for q, a in QA
            ],
            [
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": "hm", "weight": 0},
                        {"role": "user", "content": "again"},
                        {"role": "assistant", "content": a},
                    ]
                }
                for q, a in QA
            ],
            "messages",
        ),
        "llamafactory alpaca with history": (
            [{"instruction": q, "input": "", "output": a, "history": [["Hello", "Hi."]]} for q, a in QA],
            [
                {
                    "messages": [
                        {"role": "user", "content": "Hello"},
                        {"role": "assistant", "content": "Hi."},
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": a},
                    ]
                }
                for q, a in QA
            ],
            "alpaca",
        ),
    }


@pytest.mark.parametrize("name", list(peers()))
def test_each_layout_is_detected_and_trains_the_tokens_its_twin_trains(tmp_path, tokenizer, name):
    theirs, ours, layout = peers()[name]
    read = load_source(write_jsonl(tmp_path / "theirs.jsonl", theirs))
    twin = load_source(write_jsonl(tmp_path / "ours.jsonl", ours)).examples
    assert len(read.examples) == len(theirs) and not read.problems
    assert {e.layout for e in read.examples} == {"preference" if layout == "preference" else layout}
    assert encoded(tokenizer, read.examples) == encoded(tokenizer, twin)
    assert all(n > 0 for n in trained(tokenizer, read.examples))
    assert [e.desirable for e in read.examples] == [e.desirable for e in twin]
    assert [e.tools for e in read.examples] == [e.tools for e in twin]
    pairs = [e for e in read.examples if e.rejected is not None]
    assert len(pairs) == (len(theirs) if layout == "preference" else 0)
    for e, t in zip(pairs, twin):
        assert (
            encode_example(tokenizer, type(e)(e.rejected, ""), 4096, "last").input_ids
            == encode_example(tokenizer, type(t)(t.rejected, ""), 4096, "last").input_ids
        )
    assert not read.ignored


def test_media_parts_are_refused_naming_the_record(tmp_path):
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
                {"role": "assistant", "content": "A cat."},
            ]
        }
    ]
    with pytest.raises(UserError) as e:
        load_source(write_jsonl(tmp_path / "img.jsonl", rows))
    assert (
        f"{tmp_path / 'img.jsonl'}:1: messages[0].content[1] is a 'image_url' part: tunesmith trains text models only"
        in str(e.value)
    )


def test_no_valid_record_lists_its_first_five_problems_and_the_count(tmp_path):
    rows = [{"messages": [{"role": "user", "content": q}]} for q, _ in QA * 2]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as e:
        load_source(path, on_error="skip")
    lines = str(e.value).splitlines()
    assert lines[0] == f"{path}: no valid records (8 with problems); the first:"
    assert lines[1:] == [f"{path}:{n}: no assistant turn to learn from" for n in range(1, 6)] + [
        "... and 3 more problems"
    ]


def test_inspect_of_a_file_with_no_valid_record(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": q}]} for q, _ in QA * 2]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = cli_here(["data", "inspect", path, "--model", str(tiny_model_dir)], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: {path}: no valid records (8 with problems); the first:"
    assert lines[1:] == [f"error: {path}:{n}: no assistant turn to learn from" for n in range(1, 6)] + [
        "error: ... and 3 more problems"
    ]


def test_keys_the_layout_ignores_are_reported_once_with_counts(tmp_path, tiny_model_dir):
    rows = [{"prompt": q, "completion": a, "tools": [{"type": "function", "function": WEATHER}]} for q, a in QA]
    rows += [{"messages": chat(q, a), "margin": 1.0} for q, a in QA[:3]]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    loaded = load_source(path)
    assert dict(loaded.ignored) == {"tools": 4, "margin": 3}
    result = cli_here(["data", "inspect", path, "--model", str(tiny_model_dir), "--show", "0"], tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "keys ignored" in line]
    assert len(warnings) == 1 and "'tools' (4), 'margin' (3)" in warnings[0], result.stdout
    # the same warning when a run reads the source
    val = write_jsonl(tmp_path / "val.jsonl", [{"messages": chat(q, a)} for q, a in QA])
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, {"train": path, "val": val}, tmp_path / "runs"))
    from tunesmith.run.inputs import train_sources

    console = Console(record=True, width=400)
    train_sources(cfg, console)
    assert (
        console.export_text().count("keys ignored by the messages, prompt_completion layout: 'tools' (4), 'margin' (3)")
        == 1
    )


# --- LLaMA-Factory's data registry -------------------------------------------------------------


def registry(tmp_path):
    """A dataset_info.json like LLaMA-Factory's data/ folder, each entry's file beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    files = {
        "alpaca_en_demo.json": [{"instruction": q, "input": "", "output": a} for q, a in QA],
        "glaive_toolcall_en_demo.json": peers()["sharegpt tools, some '[]'"][0],
        "dpo_en_demo.json": [
            {
                "conversations": [{"from": "human", "value": q}],
                "chosen": {"from": "gpt", "value": a},
                "rejected": {"from": "gpt", "value": "no idea"},
            }
            for q, a in QA
        ],
        "kto_en_demo.json": [
            {"messages": [{"content": q, "role": "user"}, {"content": a, "role": "assistant"}], "label": i % 2 == 0}
            for i, (q, a) in enumerate(QA)
        ],
        "custom.json": [{"question": q, "answer": a, "sys": SYSTEM} for q, a in QA],
        "ranked.json": [{"instruction": q, "input": "", "chosen": a, "rejected": "no idea"} for q, a in QA],
        "pictures.json": [{"instruction": "What is it?", "output": "A cat.", "images": ["cat.png"]}],
    }
    for name, rows in files.items():
        (folder / name).write_text(json.dumps(rows, indent=1))
    info = {
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "glaive_toolcall_en_demo": {
            "file_name": "glaive_toolcall_en_demo.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
        "dpo_en_demo": {
            "file_name": "dpo_en_demo.json",
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "kto_en_demo": {
            "file_name": "kto_en_demo.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        },
        "custom": {
            "file_name": "custom.json",
            "columns": {"prompt": "question", "response": "answer", "system": "sys"},
        },
        "ranked": {
            "file_name": "ranked.json",
            "ranking": True,
            "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
        },
        "pictures": {
            "file_name": "pictures.json",
            "columns": {"prompt": "instruction", "response": "output", "images": "images"},
        },
        "hosted": {"ms_hub_url": "someone/data"},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return folder


@pytest.mark.parametrize(
    "dataset, twin",
    [
        ("alpaca_en_demo", [{"messages": chat(q, a, system=False)} for q, a in QA]),
        ("glaive_toolcall_en_demo", peers()["sharegpt tools, some '[]'"][1]),
        ("dpo_en_demo", [{"prompt": q, "chosen": a, "rejected": "no idea"} for q, a in QA]),
        ("kto_en_demo", [{"prompt": q, "completion": a, "label": i % 2 == 0} for i, (q, a) in enumerate(QA)]),
        ("custom", [{"messages": chat(q, a)} for q, a in QA]),
        ("ranked", [{"prompt": q, "chosen": a, "rejected": "no idea"} for q, a in QA]),
    ],
)
def test_a_llamafactory_registry_entry_reads_as_llamafactory_reads_it(tmp_path, tokenizer, dataset, twin):
    folder = registry(tmp_path)
    cfg = load_config(
        write_config(
            tmp_path / "c.yaml",
            "m",
            {"train": "x", "val": "x"},
            tmp_path / "runs",
            data={"train": [{"path": str(folder / "dataset_info.json"), "dataset": dataset}]},
        )
    )
    source = cfg.data.train[0]
    read = load_source(source.path, **source.options()).examples
    ours = load_source(write_jsonl(tmp_path / "ours.jsonl", twin)).examples
    assert len(read) == len(twin)
    assert encoded(tokenizer, read) == encoded(tokenizer, ours)
    assert [e.desirable for e in read] == [e.desirable for e in ours]
    assert [e.rejected for e in read] == [e.rejected for e in ours]
    assert read[0].source.startswith(
        str(folder / f"{dataset.removesuffix('_en_demo')}")
    )  # locations name the data file


def test_registry_problems_are_one_line_each(tmp_path):
    folder = registry(tmp_path)
    with pytest.raises(UserError, match=r"dataset_info.json: no dataset 'nope' \(datasets: alpaca_en_demo, custom,"):
        load_source(str(folder), dataset="nope")
    with pytest.raises(UserError, match=r"dataset 'hosted': ms_hub_url; tunesmith reads local files"):
        load_source(str(folder), dataset="hosted")
    with pytest.raises(
        UserError, match=r"pictures.json\[0\]: 'images' holds images: tunesmith trains text models only"
    ):
        load_source(str(folder), dataset="pictures")
    with pytest.raises(UserError, match=r"no LLaMA-Factory dataset_info.json here"):
        load_source(str(tmp_path), dataset="alpaca_en_demo")


# --- Axolotl's chat_template options ----------------------------------------------------------


def test_axolotl_chat_template_options(tmp_path, tokenizer):
    rows = [
        {
            "conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
            ],
            "id": i,
        }
        for i, (q, a) in enumerate(QA)
    ]
    path = write_jsonl(tmp_path / "axolotl.jsonl", rows)
    options = {
        "path": path,
        "type": "chat_template",
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles_to_train": ["gpt"],
    }
    cfg = load_config(
        write_config(tmp_path / "c.yaml", "m", {"train": "x", "val": "x"}, tmp_path / "runs", data={"train": [options]})
    )
    source = cfg.data.train[0]
    read = load_source(source.path, **source.options()).examples
    ours = load_source(write_jsonl(tmp_path / "ours.jsonl", [{"messages": chat(q, a)} for q, a in QA])).examples
    assert encoded(tokenizer, read) == encoded(tokenizer, ours)
    # the older option names, and roles named by the source's names
    old = {k: v for k, v in options.items() if k != "message_property_mappings"}
    cfg = load_config(
        write_config(
            tmp_path / "d.yaml",
            "m",
            {"train": "x", "val": "x"},
            tmp_path / "runs",
            data={
                "train": [
                    {
                        **old,
                        "message_field_role": "from",
                        "message_field_content": "value",
                        "roles": {"user": ["human"], "assistant": ["gpt"], "system": ["system"]},
                    }
                ]
            },
        )
    )
    source = cfg.data.train[0]
    assert encoded(tokenizer, load_source(source.path, **source.options()).examples) == encoded(tokenizer, ours)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"type": "chat_template", "roles_to_train": ["user", "assistant"]},
            "tunesmith trains the assistant's turns (other roles: user)",
        ),
        ({"field_messages": "conversations"}, "field_messages: Axolotl's chat options need type: chat_template"),
        ({"type": "chat_template", "dataset": "x"}, "give dataset (LLaMA-Factory) or type (Axolotl), not both"),
    ],
)
def test_axolotl_options_that_cannot_be_honoured_are_refused(tmp_path, options, message):
    cfg = write_config(
        tmp_path / "c.yaml",
        "m",
        {"train": "x", "val": "x"},
        tmp_path / "runs",
        data={"train": [{"path": "x.jsonl", **options}]},
    )
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(cfg)


# --- what each method does with labels and pairs -----------------------------------------------


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """The same KTO data as LLaMA-Factory's messages + label and as TRL's prompt/completion/label."""
    from tunesmith.tasks.dates import PROSE_ANSWER

    folder = tmp_path_factory.mktemp("judged")
    rows = [(q, a, True) for q, a in QA * 4] + [(q, PROSE_ANSWER + " soon.", False) for q, _ in QA * 4]
    lf = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "label": good}
        for q, a, good in rows
    ]
    trl = [{"prompt": q, "completion": a, "label": good} for q, a, good in rows]
    good = [{"prompt": q, "completion": a} for q, a, ok in rows if ok]
    return {
        "messages": write_jsonl(folder / "kto_messages.jsonl", lf),
        "trl": write_jsonl(folder / "kto_trl.jsonl", trl),
        "desirable": write_jsonl(folder / "desirable.jsonl", good),
    }


def run_losses(tmp_path, model, data, name, **sections):
    from tunesmith.run import train

    cfg = write_config(
        tmp_path / f"{name}.yaml",
        model,
        {"train": data, "val": data},
        tmp_path / "runs",
        name=name,
        train={"max_steps": 3, "batch_size": 4, "lr": 1e-2},
        **sections,
    )
    train(load_config(cfg), quiet=True)
    return [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl") if "loss" in r]


def test_kto_in_messages_form_trains_kto_with_its_labels(tmp_path, tiny_model_dir, judged):
    kto = {"method": "dpo", "preference": {"loss": "kto"}}
    theirs = run_losses(tmp_path, tiny_model_dir, judged["messages"], "lf", **kto)
    ours = run_losses(tmp_path, tiny_model_dir, judged["trl"], "trl", **kto)
    assert len(theirs) == 3 and theirs == ours


def test_sft_on_labelled_records_trains_on_the_desirable_ones_only(tmp_path, tiny_model_dir, judged):
    from tunesmith.run.inputs import train_sources

    labelled = run_losses(tmp_path, tiny_model_dir, judged["messages"], "labelled")
    desirable = run_losses(tmp_path, tiny_model_dir, judged["desirable"], "desirable")
    assert len(labelled) == 3 and labelled == desirable
    cfg = load_config(
        write_config(
            tmp_path / "c.yaml",
            tiny_model_dir,
            {"train": judged["messages"], "val": judged["messages"]},
            tmp_path / "runs",
        )
    )
    console = Console(record=True, width=400)
    sources, _ = train_sources(cfg, console)
    assert len(sources[0]) == 16 and all(e.desirable for e in sources[0])
    assert (
        "16 records labelled undesirable (label: false) left out: method sft trains on the 16 desirable ones only"
        in console.export_text()
    )


def test_dpo_on_sharegpt_pairs_gets_the_pairs_of_the_preference_layout(tmp_path, tokenizer):
    """The batches a DPO run builds from LLaMA-Factory's ShareGPT pairs equal those from the same
    data in the `preference` layout, tensor for tensor."""
    import torch

    from tunesmith.methods import build_method

    theirs, ours, _ = peers()["llamafactory dpo (sharegpt pairs)"]
    cfg = load_config(
        write_config(tmp_path / "c.yaml", "m", {"train": "x", "val": "x"}, tmp_path / "runs", method="dpo")
    )
    batches = []
    for rows, name in ((theirs, "theirs"), (ours, "ours")):
        method = build_method("dpo", cfg)
        examples = load_source(write_jsonl(tmp_path / f"{name}.jsonl", rows)).examples
        batches.append(method.collate([method.features(e, tokenizer) for e in examples], tokenizer))

    def assert_same(a: dict, b: dict, where: str = "") -> None:  # nested batches too (pairs after their prompt)
        assert a.keys() == b.keys(), where
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), where + key
            elif isinstance(value, dict):
                assert_same(value, b[key], f"{where}{key}.")
            else:
                assert value == b[key], where + key

    assert_same(*batches)
    assert "shared_prompts" in batches[0]
    assert batches[0]["n_items"] == len(QA)


def test_data_inspect_reads_a_registry_entry_and_a_runs_sources(tmp_path, tiny_model_dir):
    folder = registry(tmp_path)
    out = tmp_path / "stats.json"
    result = cli_here(
        [
            "data",
            "inspect",
            str(folder / "dataset_info.json"),
            "--dataset",
            "dpo_en_demo",
            "--model",
            str(tiny_model_dir),
            "--json",
            str(out),
            "--show",
            "1",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(out.read_text())
    assert stats["records"] == len(QA) and stats["layouts"] == {"preference": len(QA)}
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QA]
    chats = write_jsonl(tmp_path / "chats.jsonl", rows)
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        {"train": "x", "val": "x"},
        tmp_path / "runs",
        data={
            "train": [
                {
                    "path": chats,
                    "type": "chat_template",
                    "field_messages": "conversations",
                    "message_property_mappings": {"role": "from", "content": "value"},
                },
                {"path": str(folder), "dataset": "kto_en_demo"},
            ]
        },
    )
    result = cli_here(["data", "inspect", "--config", str(cfg), "--json", str(out), "--show", "0"], tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = json.loads(out.read_text())
    assert (first["records"], first["layouts"]) == (len(QA), {"messages": len(QA)})
    assert (second["records"], second["undesirable"]) == (len(QA), len(QA) // 2)
    assert "2 desirable, 2 undesirable (label: false)" in result.stdout
    both = cli_here(["data", "inspect", chats, "--config", str(cfg)], tmp_path)
    assert both.returncode == 2 and "give a data PATH or --config RUN.yaml (one of them)" in both.stderr
