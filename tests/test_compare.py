"""compare: baselines + variants + forgetting probe + report, end to end on the tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import cli_here, read_jsonl, write_config


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir, date_data):
    tmp = tmp_path_factory.mktemp("compare")
    config = write_config(
        tmp / "cmp.yaml",
        tiny_model_dir,
        date_data,
        tmp / "runs",
        name="cmp",
        train={"max_steps": 8, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "log_every": 2, "warmup": 0},
        eval={"test": str(date_data["test"]), "max_new_tokens": 8, "shots": [0, 2], "latency_samples": 2},
        forgetting={"probe": True, "probe_limit": 30, "text": str(date_data["val"]), "text_limit": 12},
        compare={"variants": {"lora": {}, "lora-replay": {"forgetting.replay": 0.3, "forgetting.kl": 0.5}}},
    )
    result = cli_here(["compare", str(config), "--quiet"], tmp)
    assert result.returncode == 0, result.stderr
    return tmp / "runs" / "cmp"


def test_compare_writes_every_part(compared):
    for path in [
        "baselines/shots-0.json",
        "baselines/shots-2.json",
        "baselines/shots-2_predictions.jsonl",
        "variants/lora/eval/test.json",
        "variants/lora/forgetting/summary.json",
        "variants/lora-replay/eval/test_predictions.jsonl",
        "variants/lora-replay/report.html",
        "report.json",
        "report.md",
        "report.html",
        "compare.json",
    ]:
        assert (compared / path).is_file(), path
    report = json.loads((compared / "report.json").read_text())
    assert [r["label"] for r in report["task"]] == ["zero-shot", "2-shot", "tuned: lora", "tuned: lora-replay"]
    assert {"loss", "task", "cost", "forgetting"} <= set(report["plots"])  # trade-off: test_report.py
    for plot in report["plots"].values():
        assert (compared / plot).stat().st_size > 5000
    # k-shot prompts carry the shots: longer than zero-shot, drawn from the training file
    zero, two = (json.loads((compared / f"baselines/shots-{k}.json").read_text()) for k in (0, 2))
    assert two["prompt_tokens"] > zero["prompt_tokens"] + 20
    assert all("train.jsonl:" in s for s in two["shot_sources"])
    assert report["recommendation"]["choice"] in ("prompting", "fine-tune")
    # general-text perplexity, base vs tuned: the same documents, and tuning moved it
    for row in report["forgetting"]:
        assert row["text_documents"] == 12 and row["text_base_ppl"] > 1
        assert row["text_tuned_ppl"] != row["text_base_ppl"]


def test_probe_limit_takes_the_first_questions_and_a_third_as_many_drift_prompts(compared):
    from tunesmith.forgetting import probe

    for side in ("base", "tuned"):
        items = json.loads((compared / "variants/lora/forgetting" / f"{side}.json").read_text())
        assert [q["question"] for q in items["qa"]] == [q["question"] for q in probe.general_qa()[:30]]
        assert [d["prompt"] for d in items["drift"]] == probe.general_prompts()[0][:10]


def test_replay_variant_trained_with_kl_on_replay_data(compared):
    records = read_jsonl(compared / "variants/lora-replay/metrics.jsonl")
    assert any(r.get("kl", 0) > 0 for r in records)
    assert all("kl" not in r for r in read_jsonl(compared / "variants/lora/metrics.jsonl"))
    summary = json.loads((compared / "variants/lora-replay/summary.json").read_text())
    assert summary["mitigation"]["replay"] == 0.3


def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?%?", text)


def _json_numbers(root: Path) -> set[float]:
    found: set[float] = set()

    def walk(v):
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            found.add(float(v))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for path in root.rglob("*.json"):
        if path.name not in ("report.json", "compare.json"):  # the report's own data: rendered, not measured
            walk(json.loads(path.read_text()))
    return found


def test_every_number_in_the_report_comes_from_a_json_file(compared):
    from tunesmith.report.recommend import MARGIN, TASK_TOLERANCE

    # measured values (report.json, rendered from them, is not a source), seconds shown as
    # milliseconds, and the recommendation's stated thresholds
    measured = _json_numbers(compared)
    values = measured | {v * 1000 for v in measured} | {MARGIN, TASK_TOLERANCE}
    text = (compared / "report.md").read_text()
    text = re.sub(r"\([^()]*\.(?:json|png)\)|[\w./-]+\.(?:json|png)", "", text)  # file names are not numbers
    text = re.sub(r"\b\w+-\d+\b|tuned: [\w-]+|\d+-shot", "", text)  # labels such as shots-2, 2-shot
    unmatched = []
    for token in _numbers(text):
        pct = token.endswith("%")
        shown = float(token.rstrip("%").replace(",", "").lstrip("+"))
        decimals = len(token.rstrip("%").split(".")[1]) if "." in token else 0
        tol = 0.5 * 10**-decimals + 1e-9
        candidates = [v * 100 for v in values] if pct else values | {v * 100 for v in values}
        if not any(abs(abs(c) - abs(shown)) <= tol for c in candidates):
            unmatched.append(token)
    assert not unmatched, f"numbers in report.md with no JSON source: {unmatched}"
