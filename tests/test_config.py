"""Config errors name the key, the file:line and what is allowed; overrides are typed."""

import pytest
import yaml

from tunesmith.config import apply_override, load_config
from tunesmith.errors import UserError

BASE = """name: demo
model: smollm2-135m-instruct
adapter: {type: lora, r: 8}
data:
  train: [{path: data/train.jsonl, weight: 1.0}]
  val: data/val.jsonl
train:
  max_steps: 10
  lr: 3.0e-4
"""


def cfg_file(tmp_path, text=BASE):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_reference_config_loads_with_defaults(tmp_path):
    cfg = load_config(cfg_file(tmp_path))
    assert cfg.adapter.r == 8 and cfg.adapter.alpha == 32 and cfg.train.schedule == "cosine"
    assert cfg.data.train[0].path == "data/train.jsonl" and cfg.output.dir == "runs"
    assert str(cfg.run_dir()) == "runs/demo"


def test_unknown_key_names_key_line_and_allowed_keys(tmp_path):
    p = cfg_file(tmp_path, BASE.replace("  lr: 3.0e-4", "  lr: 3.0e-4\n  learning_rate: 1"))
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:10: unknown key 'train.learning_rate'")
    assert "allowed here:" in msg and "lr" in msg and "max_steps" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    p = cfg_file(tmp_path, BASE.replace("max_steps: 10", "max_steps: lots"))
    with pytest.raises(UserError, match=r"run.yaml:8: train.max_steps: .*integer.*'lots'"):
        load_config(p)


def test_bad_choice_lists_what_is_allowed(tmp_path):
    with pytest.raises(
        UserError, match=r"adapter.type: Input should be 'lora', 'qlora', 'ia3', 'prefix', 'prompt' or 'none'"
    ):
        load_config(cfg_file(tmp_path), ["adapter.type=prefix-magic"])


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    cfg = load_config(cfg_file(tmp_path), ["train.lr=1e-4", "adapter.type=none", "data.train.0.weight=2", "name=other"])
    assert cfg.train.lr == 1e-4 and cfg.adapter.type == "none" and cfg.data.train[0].weight == 2.0
    assert cfg.name == "other"
    with pytest.raises(UserError, match="unknown key 'train.nope'"):
        load_config(cfg_file(tmp_path), ["train.nope=1"])
    with pytest.raises(UserError, match="expected key=value"):
        load_config(cfg_file(tmp_path), ["train.lr"])


def test_missing_sections_and_files(tmp_path):
    with pytest.raises(UserError, match="missing required key 'data'"):
        load_config(cfg_file(tmp_path, "name: x\ntrain: {max_steps: 1}\n"))
    with pytest.raises(UserError, match="give train.max_steps or train.epochs"):
        load_config(cfg_file(tmp_path, BASE.replace("  max_steps: 10\n", "")))
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(UserError, match=r"run.yaml:2: invalid YAML"):
        load_config(cfg_file(tmp_path, "name: x\n  bad: [\n"))


def test_a_plain_path_is_one_source(tmp_path):
    cfg = load_config(cfg_file(tmp_path), ["data.train=a.jsonl"])
    assert [(s.path, s.weight) for s in cfg.data.train] == [("a.jsonl", 1.0)]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(cfg_file(tmp_path))
    again = load_config(cfg_file(tmp_path, cfg.to_yaml()))
    assert again == cfg


def test_apply_override_creates_sections():
    tree = {}
    apply_override(tree, "eval.every=5")
    assert tree == {"eval": {"every": 5}}
    assert yaml.safe_dump(tree)


def test_unknown_key_inside_a_list_of_sources(tmp_path):
    with pytest.raises(
        UserError,
        match=r"run.yaml:5: unknown key 'data.train.0.wieght' \(allowed here: path, weight, format, columns, key, "
        r"split, train_on, dataset, type, "
        r"field_messages, message_property_mappings, message_field_role, message_field_content, roles, "
        r"roles_to_train\)",
    ):
        load_config(cfg_file(tmp_path), ["data.train.0.wieght=2"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adapter.type=ia3", "adapter.dora=true"], r"adapter: dora: LoRA options; adapter.type is ia3"),
        (["adapter.freeze={top_layers: 2}"], r"freeze: partial full fine-tuning needs adapter.type none, not lora"),
        (
            ["adapter.init_text=Reply with the date"],
            r"adapter: init_text: prefix and prompt tuning option; adapter.type is lora",
        ),
        (["adapter.type=none", "adapter.freeze={}"], r"adapter.freeze: set exactly one of top_layers, modules"),
        (["adapter.type=prompt", "data.packing=true"], r"data.packing: .*prompt tuning .* cannot pack"),
        (["adapter.type=prefix", "train.gradient_checkpointing=true"], r"train.gradient_checkpointing: prefix tuning"),
        (["adapter.type=qlora", "adapter.bits=3"], r"adapter.bits: Input should be 4 or 8"),
    ],
)
def test_adapter_options_that_do_not_fit_are_refused(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(cfg_file(tmp_path), overrides)
