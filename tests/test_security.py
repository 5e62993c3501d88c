"""Nothing trusted that should not be: no pickle from a user's path, no model code run unless the
config asks for it (with a warning)."""

import json
import pickle
import re
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from tunesmith.errors import UserError

SRC = Path(__file__).parents[1] / "src" / "tunesmith"


class RunsCode:
    """A pickle that, when loaded, creates the marker file: what a malicious .bin can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran code"))


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_model_dir, capsys):
    from tunesmith.cli import main
    from tunesmith.model.resolve import resolve

    marker = tmp_path / "pwned"
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_model_dir / "config.json", model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, model)
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(UserError, match="weights only as pickle files .pytorch_model.bin.*unpickling can run code"):
        resolve(str(model))
    with pytest.raises(SystemExit) as done:
        main(["generate", str(model), "--prompt", "hi"])
    assert done.value.code == 2 and "pickle" in capsys.readouterr().err

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_model_dir), "peft_type": "LORA"})
    )
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(UserError, match="adapter_model.safetensors only"):
        resolve(str(adapter))
    assert not marker.exists()


def test_no_code_path_unpickles():
    """Checkpoints are safetensors + JSON; nothing in tunesmith calls torch.load or pickle.load."""
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\btorch\.load\(|\bpickle\.loads?\(|\bjoblib\.load\(|weights_only\s*=\s*False", line)
    ]
    assert offenders == []


def test_a_checkpoint_holds_only_safetensors_and_json(tmp_path, tiny_model_dir, date_data):
    from helpers import write_config

    from tunesmith.config import load_config
    from tunesmith.run import train

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 2, "precision": "fp32"},
        output={"dir": str(tmp_path / "runs"), "save_every": 1},
    )
    train(load_config(cfg, []), quiet=True)
    files = {p.name for p in (tmp_path / "runs" / "tiny" / "checkpoints").rglob("*") if p.is_file()}
    assert files == {
        "trainable.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
        "adapter_model.safetensors",
        "adapter_config.json",
    }  # the step's adapter, as PEFT saves one


def test_an_adapter_checkpoint_loads_in_plain_peft_with_that_steps_weights(tmp_path, tiny_model_dir, date_data):
    from helpers import write_config
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunesmith.config import load_config
    from tunesmith.run import train

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 3, "precision": "fp32", "lr": 1e-2},
        output={"dir": str(tmp_path / "runs"), "save_every": 1},
    )
    train(load_config(cfg, []), quiet=True)
    ckpt = tmp_path / "runs" / "tiny" / "checkpoints" / "step-2"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ckpt / "adapter")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    saved = load_file(ckpt / "trainable.safetensors")
    assert len(loaded) == len(saved) > 0
    for name, value in saved.items():
        assert torch.equal(loaded[name], value), name
    assert any(float(v.abs().sum()) > 0 for n, v in saved.items() if "lora_B" in n)  # trained: not the initial zeros


CUSTOM_CODE = """
import os
from pathlib import Path

Path(os.environ["TUNESMITH_TEST_MARKER"]).write_text("model code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class ShippedConfig(LlamaConfig):
    model_type = "shipped_llama"


class ShippedModel(LlamaForCausalLM):
    config_class = ShippedConfig
"""


@pytest.fixture
def model_with_code(tmp_path, tiny_model_dir, monkeypatch):
    folder = tmp_path / f"shipped_{uuid.uuid4().hex[:8]}"  # its own module name: imported afresh in each test
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="shipped_llama",
        architectures=["ShippedModel"],
        auto_map={"AutoConfig": "custom.ShippedConfig", "AutoModelForCausalLM": "custom.ShippedModel"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(CUSTOM_CODE)
    marker = tmp_path / "ran"
    monkeypatch.setenv("TUNESMITH_TEST_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    return folder, marker


def test_model_code_runs_only_when_trusted(model_with_code):
    from tunesmith.model.load import load_base, remote_code_trusted

    folder, marker = model_with_code
    with pytest.raises(UserError, match="could not load model"):
        load_base(folder)
    assert not marker.exists()
    with remote_code_trusted(True):
        model = load_base(folder)
    assert marker.read_text() == "model code ran" and type(model).__name__ == "ShippedModel"


def test_a_config_turns_remote_code_on_with_a_warning(tmp_path, model_with_code, date_data, capsys):
    from helpers import write_config

    from tunesmith.cli import main

    folder, marker = model_with_code
    cfg = write_config(
        tmp_path / "c.yaml",
        folder,
        date_data,
        tmp_path / "runs",
        trust_remote_code=True,
        train={"max_steps": 1, "precision": "fp32"},
    )
    with pytest.raises(SystemExit) as done:
        main(["train", str(cfg), "--quiet"])
    err = capsys.readouterr().err
    assert done.value.code == 0 and "warning: trust_remote_code is on" in err and marker.exists()
