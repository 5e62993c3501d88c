"""Every adapter type trains through the one engine, evaluates, and exports what plain PEFT loads."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.run import train

# adapter, learning rate, the share of the first loss the validation loss must fall below in 30 steps
# (a frozen random tiny model leaves 512 prompt-tuning parameters the least room to learn)
ADAPTERS = {
    "lora-rslora-dora-plus": (
        {"type": "lora", "r": 8, "alpha": 16, "rslora": True, "dora": True, "lora_plus_ratio": 4},
        1e-2,
        0.8,
    ),
    "qlora-nf4": ({"type": "qlora", "r": 8, "alpha": 16, "double_quant": True}, 1e-2, 0.8),
    "qlora-8bit": ({"type": "qlora", "r": 8, "alpha": 16, "bits": 8}, 1e-2, 0.8),
    "ia3": ({"type": "ia3"}, 3e-2, 0.8),
    "prefix": ({"type": "prefix", "virtual_tokens": 8}, 1e-1, 0.8),
    "prompt": ({"type": "prompt", "virtual_tokens": 8}, 1e-1, 0.9),
    "freeze-top": ({"type": "none", "freeze": {"top_layers": 1}}, 3e-3, 0.8),
    "freeze-modules": ({"type": "none", "freeze": {"modules": ["mlp"]}}, 3e-3, 0.8),
}


FROZEN_PARTS = [n for n, (a, _, _) in ADAPTERS.items() if a["type"] == "none"]  # partial fine-tunes
WITH_ADAPTER = [n for n in ADAPTERS if n not in FROZEN_PARTS]  # what exports a PEFT adapter
QLORA = [n for n, (a, _, _) in ADAPTERS.items() if a["type"] == "qlora"]


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory, tiny_model_dir, date_data):
    """One 30-step run per adapter (a test names the adapters it applies to), shared by the tests."""
    adapter, lr, _ = ADAPTERS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    cfg_path = write_config(
        tmp / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp / "runs",
        adapter=adapter,
        train={"max_steps": 30, "lr": lr},
        eval={"every": 30, "test": str(date_data["test"]), "max_new_tokens": 8},
    )
    summary = train(load_config(cfg_path), quiet=True)
    return request.param, tmp / "runs" / "tiny", summary


@pytest.mark.parametrize("trained", list(ADAPTERS), indirect=True)
def test_each_adapter_type_learns_the_task(trained):
    name, run, summary = trained
    records = read_jsonl(run / "metrics.jsonl")
    first = records[0]["loss"]
    assert records[-1]["val_loss"] < ADAPTERS[name][2] * first, (name, first, records[-1]["val_loss"])
    assert json.loads((run / "eval" / "test.json").read_text())["n"] == 16
    trainable = summary["trainable_parameters"]
    assert 0 < trainable < 200_000  # never the whole tiny model (~200k parameters)


@pytest.mark.parametrize("trained", FROZEN_PARTS, indirect=True)
def test_only_the_chosen_part_trains(trained, tiny_model_dir):
    from safetensors.torch import load_file

    name, run, _ = trained
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if name == "freeze-top":
        assert changed and all(".layers.1." in k or k == "model.norm.weight" for k in changed)
        assert "model.embed_tokens.weight" not in changed
    else:
        assert changed and all(".mlp." in k for k in changed)


@pytest.mark.parametrize("trained", WITH_ADAPTER, indirect=True)
def test_exported_adapter_reloads_in_plain_peft_with_identical_greedy_outputs(
    trained, tiny_model_dir, tmp_path, date_data
):
    name, run, _ = trained  # (a partial fine-tune exports a plain model folder: test_export.py)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.data.records import load_examples
    from tunesmith.eval.generate import Sampling, generate_all
    from tunesmith.eval.task import split_reference
    from tunesmith.export.exporter import export
    from tunesmith.model.load import load_for_inference

    assert export(str(run), tmp_path / "adapter")["kind"] == "adapter"
    quantized = {}
    if name.startswith("qlora"):  # the base quantized as the user would, from the exported settings
        from transformers import BitsAndBytesConfig

        q = json.loads((tmp_path / "adapter" / "quantization.json").read_text())
        quantized["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if q["bits"] == 8
            else BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=q["quant_type"],
                bnb_4bit_use_double_quant=q["double_quant"],
                bnb_4bit_compute_dtype=torch.float32,
            )
        )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **quantized)
    plain = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ours, tok = load_for_inference(str(run), merge=False)
    prompts = [split_reference(e)[0] for e in load_examples(date_data["test"])[:6]]
    sampling = Sampling(max_new_tokens=8)
    replies = generate_all(ours, tok, prompts, sampling, 6)  # batched, left-padded, KV cache
    if name in ("prefix", "prompt"):
        # PEFT's own generate re-inserts virtual tokens at every step under transformers 5.x; the
        # reference is greedy decoding by plain PEFT forward passes, as in training (no cache, no padding)
        assert replies == [greedy_without_cache(plain, tok, p, 8) for p in prompts]
    else:
        assert replies == generate_all(plain, tok, prompts, sampling, 6)


def greedy_without_cache(model, tokenizer, conversation: list[dict], max_new_tokens: int) -> str:
    """Greedy decoding the slow, obvious way: one full forward pass per new token."""
    from tunesmith.data.chat import prompt_ids

    ids, new = prompt_ids(tokenizer, conversation), []
    with torch.no_grad():
        while len(new) < max_new_tokens and (not new or new[-1] != tokenizer.eos_token_id):
            x = torch.tensor([ids + new])
            new.append(int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax()))
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_prefix_tuning_starts_from_the_keys_and_values_of_real_text(tiny_model_dir):
    """The prefix PEFT feeds each layer is the base model's own cache for the init text (its
    effect on the first loss shows on a real model: test_adapters_bundled.py)."""
    from tunesmith.config import AdapterConfig
    from tunesmith.model.adapters import PREFIX_INIT_TEXT, apply_adapter
    from tunesmith.model.load import load_base, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = apply_adapter(load_base(tiny_model_dir), AdapterConfig(type="prefix", virtual_tokens=8), tok)
    ids = (tok(PREFIX_INIT_TEXT, add_special_tokens=False)["input_ids"] * 8)[:8]
    with torch.no_grad():
        out = model.get_base_model()(input_ids=torch.tensor([ids]), use_cache=True)
        prefix = model.get_prompt(batch_size=1)
    cache = out.cache if "cache" in out else out.past_key_values
    assert len(prefix.layers) == len(cache.layers) == 2
    for ours, real in zip(prefix.layers, cache.layers):
        torch.testing.assert_close(ours.keys, real.keys)
        torch.testing.assert_close(ours.values, real.values)


def test_prompt_tuning_can_start_from_a_texts_embeddings(tiny_model_dir):
    from tunesmith.config import AdapterConfig
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = apply_adapter(
        load_base(tiny_model_dir), AdapterConfig(type="prompt", virtual_tokens=6, init_text="Reply with the date"), tok
    )
    ids = (tok("Reply with the date", add_special_tokens=False)["input_ids"] * 6)[:6]
    expected = model.get_base_model().get_input_embeddings().weight[ids]
    torch.testing.assert_close(model.get_prompt(batch_size=1)[0], expected)


def test_lora_plus_gives_b_matrices_the_higher_learning_rate(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.config import AdapterConfig, TrainConfig
    from tunesmith.engine.schedule import param_groups
    from tunesmith.model.adapters import apply_adapter

    model = apply_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AdapterConfig(r=4, lora_plus_ratio=16))
    groups = param_groups(model, TrainConfig(max_steps=1, lr=1e-3), 16)
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert by_id[id(p)] == pytest.approx(1.6e-2 if "lora_B" in name else 1e-3), name


def test_8bit_adamw_falls_back_with_a_note_where_bitsandbytes_cannot_run(monkeypatch):
    import builtins

    from tunesmith.config import TrainConfig
    from tunesmith.engine.schedule import make_adamw

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer, note = make_adamw([{"params": [param]}], TrainConfig(max_steps=1, optimizer="adamw8bit"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert "using torch AdamW" in note and "No module named 'bitsandbytes'" in note


@pytest.mark.parametrize("trained", QLORA, indirect=True)
def test_qlora_merges_onto_the_dequantized_base_and_measures_the_difference(trained, tmp_path):
    name, run, _ = trained
    from tunesmith.export.exporter import export

    result = export(str(run), tmp_path / "merged", merge=True)
    check = json.loads((tmp_path / "merged" / "merge_check.json").read_text())
    assert result["merge_check"] == check and check["prompts"] == 8
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    # the same function up to rounding: bitsandbytes' CPU 4-bit path keeps its quantization state in
    # bf16, the merged model computes in fp32 (measured here: ~0.04 on logits of a random tiny model)
    assert 0 <= check["max_abs_logit_diff"] < 0.2 and check["greedy_identical"] >= 4  # measured: 6 of 8


def test_8bit_adamw_trains_where_bitsandbytes_runs(tmp_path, tiny_model_dir, date_data):
    from tunesmith.config import TrainConfig
    from tunesmith.engine.schedule import make_adamw

    optimizer, note = make_adamw(
        [{"params": [torch.nn.Parameter(torch.zeros(64, 64))]}], TrainConfig(max_steps=1, optimizer="adamw8bit")
    )
    assert note is None and type(optimizer).__name__ == "AdamW8bit"
    cfg_path = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 20, "lr": 1e-2, "optimizer": "adamw8bit"},
        eval={"every": 20},
    )
    train(load_config(cfg_path), quiet=True)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert records[-1]["val_loss"] < 0.8 * records[0]["loss"]


def saved_for_backward(cfg, train_file) -> int:
    """Bytes of activations one training forward pass keeps for the backward pass."""
    from tunesmith.data.records import load_examples
    from tunesmith.methods import build_method
    from tunesmith.model.load import load_tokenizer, tokenizer_dir
    from tunesmith.model.resolve import resolve
    from tunesmith.run import build_model

    resolved = resolve(cfg.model)
    tokenizer = load_tokenizer(tokenizer_dir(resolved))
    model, method = build_model(cfg, resolved, tokenizer).train(), build_method(cfg.method, cfg)
    batch = method.collate([method.features(e, tokenizer) for e in load_examples(train_file)[:8]], tokenizer)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t
    ):
        method.loss(model, batch)
    return sum(saved)


@pytest.mark.parametrize("adapter", [{"type": "lora", "r": 8, "alpha": 16}, {"type": "none"}])
def test_gradient_checkpointing_changes_memory_not_results(tmp_path, tiny_model_dir, date_data, adapter):
    losses, saved = {}, {}
    for gc in (False, True):
        cfg_path = write_config(
            tmp_path / f"{gc}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / f"runs-{gc}",
            adapter=adapter,
            train={"max_steps": 4, "lr": 1e-2, "gradient_checkpointing": gc},
        )
        train(load_config(cfg_path), quiet=True)
        losses[gc] = [r["loss"] for r in read_jsonl(tmp_path / f"runs-{gc}" / "tiny" / "metrics.jsonl")]
        saved[gc] = saved_for_backward(load_config(cfg_path), date_data["train"])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True][-1] < losses[True][0]
    # each decoder layer keeps only its input; what runs inside it is recomputed in the backward pass
    # (measured on 8 examples: 14.2 MB -> 1.1 MB with LoRA, 15.7 MB -> 1.5 MB fully fine-tuned)
    assert saved[True] < 0.5 * saved[False], saved
