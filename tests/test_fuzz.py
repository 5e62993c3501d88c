"""Bad input never gets a traceback: property-based fuzzing (hypothesis) of the config reader, its
--set overrides and every data layout reader, plus a kept corpus of malformed files through the
command line. Each one loads or fails with a UserError (one line per problem; exit code 2)."""

import json
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tunesmith.data.layouts import FORMATS  # noqa: E402
from tunesmith.errors import UserError  # noqa: E402

MALFORMED = Path(__file__).with_name("malformed")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["", "auto", "lora", "sft", "none", "all-linear", "1e-4", "x.jsonl"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)

VALID = {
    "name": "fuzz",
    "model": "some/model",
    "method": "sft",
    "adapter": {"type": "lora", "r": 8, "alpha": 16, "targets": "all-linear"},
    "data": {"train": [{"path": "train.jsonl"}], "max_length": 256},
    "train": {"max_steps": 10, "batch_size": 4, "lr": 3e-4},
}
KEY_PATHS = [
    ("name",),
    ("method",),
    ("model",),
    ("adapter",),
    ("adapter", "type"),
    ("adapter", "r"),
    ("adapter", "targets"),
    ("adapter", "freeze"),
    ("data",),
    ("data", "train"),
    ("data", "val"),
    ("data", "max_length"),
    ("data", "packing"),
    ("train",),
    ("train", "max_steps"),
    ("train", "lr"),
    ("train", "precision"),
    ("train", "warmup"),
    ("eval",),
    ("eval", "shots"),
    ("forgetting", "replay"),
    ("preference", "loss"),
    ("rl", "rewards"),
    ("distill",),
    ("output", "dir"),
    ("compare", "variants"),
    ("unknown_key",),
]


def _config_outcome(tmp_path: Path, text: str | bytes, overrides=()) -> None:
    from tunesmith.config import load_config

    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path, list(overrides))
    except UserError as e:
        assert str(e).strip(), "an error must say what is wrong"


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_a_config_loads_or_is_a_user_error(tmp_path, text):
    _config_outcome(tmp_path, text)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_config_loads_or_is_a_user_error(tmp_path, raw):
    _config_outcome(tmp_path, raw)


@FUZZ
@given(key=st.sampled_from(KEY_PATHS), value=values, drop=st.booleans())
def test_a_valid_config_with_one_part_changed_loads_or_is_a_user_error(tmp_path, key, value, drop):
    tree = json.loads(json.dumps(VALID))
    node = tree
    for k in key[:-1]:
        node = node.setdefault(k, {}) if isinstance(node.get(k, {}), dict) else node
    if drop:
        node.pop(key[-1], None)
    else:
        node[key[-1]] = value
    _config_outcome(tmp_path, yaml.safe_dump(tree, allow_unicode=True))


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.builds(lambda k, v: f"{'.'.join(k)}={v}", st.sampled_from(KEY_PATHS), st.text(max_size=15)),
        ),
        max_size=3,
    )
)
def test_any_set_overrides_load_or_are_a_user_error(tmp_path, overrides):
    _config_outcome(tmp_path, yaml.safe_dump(VALID), overrides)


FIELDS = [
    "messages",
    "conversations",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "instruction",
    "input",
    "output",
    "text",
    "role",
    "content",
    "from",
    "value",
    "label",
    "score",
    "system",
]
record_values = st.recursive(
    scalars | st.sampled_from(["user", "assistant", "system", "human", "gpt"]),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
    max_leaves=10,
)
records = st.dictionaries(st.sampled_from(FIELDS), record_values, max_size=4)


def _data_outcome(path: Path, fmt: str = "auto") -> None:
    from tunesmith.data.records import load_source

    for on_error in ("stop", "skip"):
        try:
            loaded = load_source(str(path), fmt=fmt, on_error=on_error)
        except UserError as e:
            assert str(e).strip()
        else:
            assert loaded.examples


@FUZZ
@given(
    rows=st.lists(st.one_of(records.map(json.dumps), st.text(max_size=40)), max_size=5), fmt=st.sampled_from(FORMATS)
)
def test_any_jsonl_lines_load_or_are_a_user_error(tmp_path, rows, fmt):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(rows), encoding="utf-8", errors="surrogatepass")
    _data_outcome(path, fmt)


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_any_bytes_as_a_data_file_load_or_are_a_user_error(tmp_path, raw, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(raw)
    _data_outcome(path)


@FUZZ
@given(
    doc=st.one_of(
        values,
        st.lists(records, max_size=4),
        st.dictionaries(st.text(max_size=6), st.lists(records, max_size=3), max_size=2),
    )
)
def test_any_json_document_loads_or_is_a_user_error(tmp_path, doc):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _data_outcome(path)


@FUZZ
@given(
    header=st.lists(st.sampled_from(FIELDS + ["", "x,y", '"q"']), min_size=1, max_size=4),
    cells=st.lists(st.lists(st.text(max_size=12), max_size=5), max_size=4),
)
def test_any_csv_loads_or_is_a_user_error(tmp_path, header, cells):
    import csv

    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(cells)
    _data_outcome(path)


def test_the_malformed_corpus_fails_cleanly_through_the_command_line(tmp_path, tiny_model_dir, capsys):
    """Every kept malformed file, through `main` as the command line runs it: exit code 2 and the
    file named (configs: `error: FILE[:LINE]: ...`; data: `data inspect` names each bad record as
    `problem: FILE:LINE: ...` or fails with `error: FILE...`), never a traceback."""
    from tunesmith.cli import main

    files = sorted(p for p in MALFORMED.iterdir() if p.is_file())
    assert len(files) >= 15
    for path in files:
        config = path.name.startswith("config")
        args = ["train", str(path)] if config else ["data", "inspect", str(path), "--model", str(tiny_model_dir)]
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main(args)
        out, err = capsys.readouterr()
        assert done.value.code == 2, (path.name, err)
        assert "Traceback" not in out + err, path.name
        named = err.startswith(f"error: {path}") or (not config and f"problem: {path}:" in out)
        assert named, (path.name, out[-500:], err)
