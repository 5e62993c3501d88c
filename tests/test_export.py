"""Exports load in plain transformers / PEFT and reproduce the run's greedy outputs."""

import json

import pytest
import torch
from helpers import cli_here, write_config

from tunesmith.data.records import load_examples
from tunesmith.eval.generate import Sampling, generate_all
from tunesmith.eval.task import split_reference
from tunesmith.model.load import load_for_inference


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, date_data):
    tmp = tmp_path_factory.mktemp("lora-run")
    cfg = write_config(
        tmp / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp / "runs",
        train={"max_steps": 40, "lr": 1e-2},
        adapter={"type": "lora", "r": 8, "alpha": 16},
    )
    result = cli_here(["train", str(cfg), "--quiet"], tmp)
    assert result.returncode == 0, result.stderr
    return tmp / "runs" / "tiny"


def greedy(model, tokenizer, data) -> list[str]:
    prompts = [split_reference(e)[0] for e in load_examples(data)]
    return generate_all(model, tokenizer, prompts, Sampling(max_new_tokens=12), batch_size=4)


def greedy_ids(model, tokenizer, data):
    """Logits of the first test prompt: a finer check than decoded text."""
    from tunesmith.data.chat import prompt_ids

    prompt = split_reference(load_examples(data)[0])[0]
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=model.device)
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def test_merged_export_reproduces_the_run_in_plain_transformers(tmp_path, lora_run, date_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = cli_here(["export", str(lora_run), "--to", str(tmp_path / "merged"), "--merge"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "merged"
    run_model, run_tok = load_for_inference(str(lora_run), merge=False)  # the run's own PEFT model, unmerged
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").to(run_model.device).eval()
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert plain_tok.chat_template and not (tmp_path / "merged" / "adapter_config.json").exists()
    outputs = greedy(plain, plain_tok, date_data["test"])
    assert outputs == greedy(run_model, run_tok, date_data["test"])
    assert any(outputs)  # the tuned tiny model says something
    torch.testing.assert_close(
        greedy_ids(plain, plain_tok, date_data["test"]),
        greedy_ids(run_model, run_tok, date_data["test"]),
        atol=1e-4,
        rtol=1e-4,
    )


def test_adapter_export_loads_in_plain_peft(tmp_path, lora_run, tiny_model_dir, date_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = cli_here(["export", str(lora_run), "--to", str(tmp_path / "adapter")], tmp_path)
    assert result.returncode == 0, result.stderr
    run_model, run_tok = load_for_inference(str(lora_run), merge=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").to(run_model.device).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    assert greedy(peft_model, tok, date_data["test"]) == greedy(run_model, run_tok, date_data["test"])


def test_full_finetune_and_model_reference_export(tmp_path, tiny_model_dir, date_data):
    from transformers import AutoModelForCausalLM

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        adapter={"type": "none"},
        train={"max_steps": 5},
    )
    assert cli_here(["train", str(cfg), "--quiet"], tmp_path).returncode == 0
    run = tmp_path / "runs" / "tiny"
    assert cli_here(["export", str(run), "--to", str(tmp_path / "full")], tmp_path).returncode == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    trained = AutoModelForCausalLM.from_pretrained(run / "final")
    for (n, a), (_, b) in zip(exported.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), n
    # a plain model reference exports as an HF folder too
    assert cli_here(["export", str(tiny_model_dir), "--to", str(tmp_path / "copy")], tmp_path).returncode == 0
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    refused = cli_here(["export", str(run), "--to", str(tmp_path / "full")], tmp_path)
    assert refused.returncode == 2 and "not empty" in refused.stderr


def load_gguf(folder):
    """A GGUF export as transformers' own GGUF loader reads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    [file] = [p.name for p in folder.glob("*.gguf")]
    return (
        AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(folder, gguf_file=file),
    )


def test_gguf_export_of_a_lora_run_round_trips_through_transformers(tmp_path, lora_run, date_data):
    import gguf
    from helpers import corpus

    from tunesmith.export.exporter import export

    merged, tok = load_for_inference(str(lora_run), merge=True)
    f16 = export(str(lora_run), tmp_path / "f16", format="gguf", quant="f16")
    assert f16["kind"] == "gguf" and f16["tensors"] == {"f32": 5, "f16": 15}  # norms f32; tied head left out
    back, back_tok = load_gguf(tmp_path / "f16")
    source = merged.state_dict()
    for name, tensor in back.state_dict().items():  # q/k rows permuted for llama.cpp and back again
        expected = source[name] if source[name].ndim == 1 else source[name].half().float()
        assert torch.equal(tensor, expected), name
    texts = corpus()[:60]
    assert [back_tok(t)["input_ids"] for t in texts] == [tok(t)["input_ids"] for t in texts]
    assert back_tok.chat_template == tok.chat_template and back_tok.eos_token_id == tok.eos_token_id
    outputs = greedy(back, back_tok, date_data["test"])
    assert outputs == greedy(merged, tok, date_data["test"]) and any(outputs)  # f16: identical replies

    export(str(lora_run), tmp_path / "q8", format="gguf", quant="q8_0")
    back, _ = load_gguf(tmp_path / "q8")
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, tensor in back.state_dict().items():  # exactly gguf's Q8_0 blocks of the merged weights
        w = source[name].numpy()
        expected = w if w.ndim == 1 else gguf.quants.dequantize(gguf.quants.quantize(w, q8), q8).reshape(w.shape)
        assert torch.equal(tensor, torch.from_numpy(expected)), name
    [small], [big] = (tmp_path / "q8").glob("*.gguf"), (tmp_path / "f16").glob("*.gguf")
    assert small.stat().st_size < big.stat().st_size


def test_every_export_carries_a_model_card_from_the_run(tmp_path, lora_run):
    from tunesmith.export.exporter import export

    summary = json.loads((lora_run / "summary.json").read_text())
    for kind, options in (("adapter", {}), ("merged", {"merge": True}), ("gguf", {"format": "gguf"})):
        export(str(lora_run), tmp_path / kind, **options)
        card = (tmp_path / kind / "README.md").read_text()
        assert card.startswith("---\nbase_model:") and "| method | sft |" in card, kind
        assert "lora (r=8, alpha=16" in card and "train: `" in card and "tokens" in card
        assert f"validation loss {summary['val_loss']:.4f}" in card
    assert "library_name: peft" in (tmp_path / "adapter" / "README.md").read_text()
    assert "-f16.gguf" in (tmp_path / "gguf" / "README.md").read_text()


def test_gguf_export_refuses_what_it_cannot_write(tmp_path, lora_run):
    for args, message in (
        (["--format", "onnx"], "--format onnx"),
        (["--format", "gguf", "--quant", "q4_k"], "--quant q4_k"),
    ):
        result = cli_here(["export", str(lora_run), "--to", str(tmp_path / "x"), *args], tmp_path)
        assert result.returncode == 2 and message in result.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral", "gemma3"])
def test_gguf_export_of_each_family_round_trips_through_transformers(tmp_path, tokenizer, date_data, family):
    """Qwen 2 (q/k/v biases), Qwen 3 (q/k norms, its own head width), Mistral (llama.cpp's llama,
    rows permuted) and Gemma 3 (norms stored as 1 + weight, sliding window): llama.cpp's
    architecture and tensor names; read back, the same weights and replies."""
    from helpers import tiny_family

    from tunesmith.export.exporter import export

    # transformers' GGUF reader takes Gemma 3's layer kinds from the default pattern (five windowed, one global)
    model = tiny_family(
        family, tokenizer, tmp_path / "model", gemma3_layers=("sliding_attention",) * 5 + ("full_attention",)
    )
    if family == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    result = export(str(tmp_path / "model"), tmp_path / "gguf", format="gguf", quant="f16")
    assert result["kind"] == "gguf"
    back, back_tok = load_gguf(tmp_path / "gguf")
    assert back.config.model_type == {"mistral": "llama", "gemma3": "gemma3_text"}.get(
        family, family
    )  # as llama.cpp names them
    source = model.state_dict()
    for name, tensor in back.state_dict().items():
        if source[name].ndim == 1:  # Gemma's norms are stored as 1 + w in f32 and read back as (1 + w) - 1
            assert (tensor - source[name]).abs().max() <= (2.4e-7 if family == "gemma3" else 0), (
                name
            )  # an f32 ulp near 1
        else:
            assert torch.equal(tensor, source[name].half().float()), name
    source_model, source_tok = load_for_inference(str(tmp_path / "model"))
    with torch.no_grad():  # at the file's f16 weights: an untrained model's greedy replies turn on near-ties
        for p in source_model.parameters():
            if p.ndim > 1:
                p.copy_(p.half().float())
    if family == "gemma3":  # transformers reads every Gemma 3 file's tokenizer as SentencePiece; this one is byte-level
        back_tok = source_tok
    # the next-token logits of a test prompt (rms_norm_eps is stored as float32: 1e-6 differs in the 8th digit)
    assert torch.allclose(
        greedy_ids(back, back_tok, date_data["test"]),
        greedy_ids(source_model, source_tok, date_data["test"]),
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "family, change, message",
    [
        ("mistral", {"sliding_window": 6}, "uses a sliding window"),
        ("gemma3", {"query_pre_attn_scalar": 24}, "query_pre_attn_scalar 24"),
        ("gemma3", {"attn_logit_softcapping": 50.0}, "no attention soft-cap"),
    ],
)
def test_gguf_export_refuses_what_llama_cpp_would_compute_differently(tmp_path, tokenizer, family, change, message):
    from helpers import tiny_family

    from tunesmith.errors import UserError
    from tunesmith.export.gguf import write_gguf

    model = tiny_family(family, tokenizer, tmp_path / "model")
    for key, value in change.items():
        setattr(model.config, key, value)
    with pytest.raises(UserError, match=message):
        write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
