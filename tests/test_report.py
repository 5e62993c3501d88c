"""The report builder and its recommendation rule, on run directories with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.eval.bootstrap import bootstrap_ci, paired_bootstrap_ci
from tunesmith.report.browser import check_report, find_browser
from tunesmith.report.build import write_report
from tunesmith.report.recommend import recommend


def _task(label, score, lo, hi, tokens=40.0, latency=100.0, variant=None):
    row = {
        "label": label,
        "kind": "tuned" if variant else "prompting",
        "score": score,
        "lo": lo,
        "hi": hi,
        "prompt_tokens": tokens,
        "latency_ms": latency,
        "n": 200,
    }
    if variant:
        row["variant"] = variant
    return row


def _forget(variant, qa_tuned, drift):
    return {
        "variant": variant,
        "label": f"tuned: {variant}",
        "qa_base": 1.0,
        "qa_tuned": qa_tuned,
        "qa_change": qa_tuned - 1,
        "qa_change_lo": qa_tuned - 1.05,
        "qa_change_hi": qa_tuned - 0.95,
        "retention": qa_tuned,
        "drift_increase": drift,
    }


def test_fine_tune_when_clearly_ahead_and_the_variant_that_keeps_most():
    task = [
        _task("zero-shot", 0.01, 0.0, 0.03),
        _task("3-shot", 0.40, 0.33, 0.47, tokens=160),
        _task("tuned: lora", 1.0, 1.0, 1.0, variant="lora"),
        _task("tuned: replay", 0.99, 0.975, 1.0, variant="replay"),
    ]
    rec = recommend(task, [_forget("lora", 0.80, 0.9), _forget("replay", 0.95, 0.2)])
    assert rec["choice"] == "fine-tune" and rec["best_prompting"] == "3-shot"
    assert rec["gap"] == 0.6
    assert rec["recommended_variant"] == "replay"  # within 5 points of the best, keeps the most
    assert "QA 95.0% (base 100.0%), task 99.0% (1.0 points below tuned: lora)" in rec["details"][-1]
    assert "40 prompt tokens per request instead of 160" in rec["text"]


def test_prompting_when_the_intervals_overlap():
    task = [_task("3-shot", 0.90, 0.85, 0.95), _task("tuned: lora", 0.94, 0.90, 0.97, variant="lora")]
    rec = recommend(task, [])
    assert rec["choice"] == "prompting" and rec["text"].startswith("Prompting is enough")


def test_a_far_better_but_forgetful_variant_is_still_recommended_over_a_weak_one():
    task = [
        _task("tuned: lora", 0.95, 0.92, 0.98, variant="lora"),
        _task("tuned: frozen", 0.70, 0.65, 0.75, variant="frozen"),
    ]
    rec = recommend(task, [_forget("lora", 0.7, 1.0), _forget("frozen", 1.0, 0.0)])
    assert rec["recommended_variant"] == "lora"
    assert rec["details"][-1].endswith("more than 5 points below the best task score: tuned: frozen.")


def test_a_few_points_of_task_score_buy_back_general_capability():
    task = [
        _task("tuned: lora", 1.0, 1.0, 1.0, variant="lora"),
        _task("tuned: replay", 0.96, 0.93, 0.99, variant="replay"),
        _task("tuned: kl", 0.94, 0.91, 0.97, variant="kl"),
    ]
    rec = recommend(task, [_forget("lora", 0.1, 0.4), _forget("replay", 0.8, -0.2), _forget("kl", 0.9, 0.0)])
    assert rec["recommended_variant"] == "replay"  # 4 points cost is within tolerance; kl's 6 is not


def test_a_single_variant_that_forgot_is_told_to_try_a_mitigation():
    task = [_task("3-shot", 0.5, 0.45, 0.55), _task("tuned: lora", 1.0, 1.0, 1.0, variant="lora")]
    rec = recommend(task, [_forget("lora", 0.2, 0.4)])
    assert rec["recommended_variant"] == "lora" and "forgetting.replay" in rec["details"][-1]


def _run(root: Path, name: str, em: list[int], qa: list[int], nll: list[float]) -> Path:
    d = root / "variants" / name
    (d / "eval").mkdir(parents=True)
    (d / "forgetting").mkdir()
    (d / "summary.json").write_text(
        json.dumps(
            {
                "steps": 10,
                "train_seconds": 1.5,
                "final_loss": 0.5,
                "val_loss": 0.6,
                "trainable_parameters": 1000,
                "tokens": 5000,
                "precision": "fp32",
                "mitigation": {"replay": 0.25, "replay_source": "self"},
            }
        )
    )
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 11)))
    (d / "eval" / "test.json").write_text(
        json.dumps(
            {
                "label": "tuned",
                "n": len(em),
                "scores": {"exact_match": bootstrap_ci(em)},
                "prompt_tokens": 50.0,
                "latency_s": 0.2,
            }
        )
    )
    base_qa, base_nll = [1] * len(qa), [1.0] * len(nll)
    (d / "forgetting" / "summary.json").write_text(
        json.dumps(
            {
                "qa": {
                    "base": bootstrap_ci(base_qa),
                    "tuned": bootstrap_ci(qa),
                    "change": paired_bootstrap_ci(base_qa, qa),
                    "retention": sum(qa) / len(qa),
                },
                "drift": {
                    "base_nll": bootstrap_ci(base_nll),
                    "tuned_nll": bootstrap_ci(nll),
                    "increase": paired_bootstrap_ci(base_nll, nll),
                },
            }
        )
    )
    return d


def test_report_with_variants_has_every_plot_and_table(tmp_path):
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "shots-0.json").write_text(
        json.dumps(
            {
                "label": "zero-shot",
                "n": 20,
                "scores": {"exact_match": bootstrap_ci([0] * 19 + [1])},
                "prompt_tokens": 50.0,
                "latency_s": 0.5,
            }
        )
    )
    runs = [
        ("lora", _run(tmp_path, "lora", [1] * 100, [1] * 14 + [0] * 6, [1.8] * 10)),
        ("lora-replay", _run(tmp_path, "lora-replay", [1] * 99 + [0], [1] * 19 + [0], [1.2] * 10)),
    ]
    html = write_report(tmp_path, runs, baselines_dir=tmp_path, primary="exact_match")
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["plots"]) == {"loss", "task", "cost", "forgetting", "tradeoff"}
    assert report["recommendation"]["choice"] == "fine-tune"
    assert report["recommendation"]["recommended_variant"] == "lora-replay"
    text = html.read_text()
    for plot in report["plots"].values():
        assert f"src='{plot}'" in text and (tmp_path / plot).stat().st_size > 5000
    md = (tmp_path / "report.md").read_text()
    assert "| tuned: lora | 100.0% |" in md and "variants/lora/eval/test.json" in md
    assert "-30.0 (" in md  # QA change of the unmitigated variant, in points


@pytest.mark.skipif(find_browser() is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_plot(tmp_path):
    test_report_with_variants_has_every_plot_and_table(tmp_path)
    result = check_report(tmp_path / "report.html", tmp_path / "shot.png")
    assert result["images"] == 5 and result["loaded"] == 5
    from PIL import Image

    shot = Image.open(tmp_path / "shot.png").convert("L")
    assert shot.size[0] == 1200 and sum(1 for c in shot.histogram() if c) > 20  # a rendered page, not a blank one
    (tmp_path / "plots" / "report-tradeoff.png").unlink()  # a missing plot is caught
    assert check_report(tmp_path / "report.html", tmp_path / "shot2.png")["loaded"] == 4


def test_a_primary_score_the_run_lacks_is_a_clear_error():
    from tunesmith.errors import UserError
    from tunesmith.eval.task import primary_interval

    result = {"scores": {"exact_match": bootstrap_ci([1, 0]), "token_f1": bootstrap_ci([1, 0.5])}}
    assert primary_interval(result, "token_f1")["mean"] == 0.75
    with pytest.raises(UserError, match=r"eval.primary 'json_valid': not among the scores \(exact_match, token_f1\)"):
        primary_interval(result, "json_valid")
