"""Weight-space interpolation between base and tuned: exact at both ends, scored in a run, written
by tunesmith merge --alpha as folders plain PEFT and transformers load."""

import json

import pytest
import torch
from helpers import cli, read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.forgetting.interpolation import Interpolation, lerp
from tunesmith.run import train

TEXT = "Text: Tom flew to Paris on 3 May 2021. Date:"


def tiny_run(tmp_path, tiny_model_dir, date_data, adapter="lora", **sections):
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 6, "lr": 1e-2, "precision": "fp32"},
        adapter={"type": adapter},
        **sections,
    )
    summary = train(load_config(cfg), quiet=True)
    return summary, tmp_path / "runs" / "tiny"


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


def test_lerp_is_exact_at_both_ends():
    a, b = torch.randn(1000), torch.randn(1000)
    assert torch.equal(lerp(a, b, 0.0), a) and torch.equal(lerp(a, b, 1.0), b)
    assert torch.allclose(lerp(a, b, 0.25), a + 0.25 * (b - a), atol=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_merge_alpha_0_is_the_base_and_alpha_1_the_tuned_model_exactly(tmp_path, tiny_model_dir, date_data, adapter):
    from transformers import AutoModelForCausalLM

    from tunesmith.model.load import load_for_inference, load_tokenizer

    _, run_dir = tiny_run(tmp_path, tiny_model_dir, date_data, adapter)
    tokenizer = load_tokenizer(tiny_model_dir)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer)
    tuned = logits(load_for_inference(str(run_dir), merge=False)[0], tokenizer)
    assert not torch.equal(base, tuned)
    out = {}
    for alpha in (0.0, 0.5, 1.0):
        done = cli(["merge", str(run_dir), "--alpha", str(alpha), "--to", str(tmp_path / f"a{alpha}")], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        folder = tmp_path / f"a{alpha}"
        if adapter == "lora":  # plain PEFT loads it onto the base
            from peft import PeftModel

            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
        else:
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
        out[alpha] = logits(model, tokenizer)
    assert torch.equal(out[0.0], base) and torch.equal(out[1.0], tuned)
    assert not torch.equal(out[0.5], base) and not torch.equal(out[0.5], tuned)


def test_a_run_scores_its_interpolated_models_and_the_report_draws_the_frontier(tmp_path, tiny_model_dir, date_data):
    summary, run_dir = tiny_run(
        tmp_path,
        tiny_model_dir,
        date_data,
        eval={"test": str(date_data["test"]), "limit": 8, "max_new_tokens": 8, "shots": [0]},
        forgetting={"probe": True, "probe_limit": 6, "interpolate": [0.0, 0.5, 1.0]},
    )
    assert [p["alpha"] for p in summary["interpolation"]] == [0.0, 0.5, 1.0]
    preds = {
        a: [r["prediction"] for r in read_jsonl(run_dir / "interpolate" / f"alpha-{a:g}" / "test_predictions.jsonl")]
        for a in (0, 0.5, 1)
    }
    # α = 1 is the tuned model and α = 0 the base model, reply for reply
    assert preds[1] == [r["prediction"] for r in read_jsonl(run_dir / "eval" / "test_predictions.jsonl")]
    assert preds[0] == [r["prediction"] for r in read_jsonl(run_dir / "baselines" / "shots-0_predictions.jsonl")]
    qa_0 = json.loads((run_dir / "interpolate" / "alpha-0" / "forgetting" / "summary.json").read_text())["qa"]
    assert qa_0["change"]["mean"] == 0.0  # the base model forgets nothing
    # the tuned model was set back to θ after the points were scored: the saved final model is the tuned one
    report = json.loads((run_dir / "report.json").read_text())
    assert {r["label"] for r in report["task"] if "interpolation" in r} == {
        "tuned: tiny α=0",
        "tuned: tiny α=0.5",
        "tuned: tiny α=1",
    }
    assert any(d.startswith("Interpolation (α = 0, 0.5, 1)") for d in report["recommendation"]["details"])


def test_the_frontier_note_says_whether_a_point_keeps_more_general_qa(tmp_path):
    from tunesmith.report import plots
    from tunesmith.report.recommend import interpolation_notes

    def tuned(variant, score, alpha=None):
        row = {"kind": "tuned", "variant": variant, "label": f"tuned: {variant}", "score": score}
        return {**row, "interpolation": {"of": "lora", "alpha": alpha, "run_dir": "runs/x"}} if alpha else row

    task = [tuned("lora", 0.90), tuned("lora@0.5", 0.70, 0.5), tuned("lora@0.75", 0.86, 0.75)]
    kept = [
        {"variant": "lora", "qa_tuned": 0.60},
        {"variant": "lora@0.5", "qa_tuned": 0.78},
        {"variant": "lora@0.75", "qa_tuned": 0.70},
    ]
    [note] = interpolation_notes(task, kept)
    assert "α = 0.75 keeps general QA at 70.0% against 60.0%" in note  # 0.5 keeps more, but is 20 points down
    [none] = interpolation_notes(task[:2], kept)
    assert none.startswith("Interpolation (α = 0.5): no interpolated point")
    rows = [{**r, "retention": q["qa_tuned"] / 0.8} for r, q in zip(task, kept)]
    rows.append({"kind": "prompting", "label": "zero-shot", "score": 0.1, "retention": 1.0})
    assert plots.tradeoff(rows, "exact_match", tmp_path / "t.png").stat().st_size > 0


def test_the_interpolation_object_restores_the_tuned_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    before = {n: p.clone() for n, p in tuned.named_parameters()}
    moved = Interpolation(tuned, base)
    moved.set(0.0)
    assert all(torch.equal(p, dict(base.named_parameters())[n]) for n, p in tuned.named_parameters())
    moved.restore()
    assert all(torch.equal(p, before[n]) for n, p in tuned.named_parameters())
