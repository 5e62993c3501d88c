"""A model behind an OpenAI-compatible endpoint as a baseline: scored like the local baselines,
priced, cached; and the recommendation that weighs the tuned model against it."""

import json
import signal

import pytest
from helpers import cli, cli_env, read_jsonl, start_server, write_config

from tunesmith.config import load_config
from tunesmith.report.recommend import MARGIN, versus_endpoint
from tunesmith.run import train

KEY = "sk-endpoint-test"


def row(label, latency_ms, cost):
    return {"label": label, "latency_ms": latency_ms, "cost_per_1000": cost}


def diff(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "n": 100}


def test_the_recommendation_weighs_score_difference_cost_and_latency():
    small, frontier = row("tuned: lora", 40.0, 0.05), row("gpt-x, 3-shot", 900.0, 3.0)
    ahead = versus_endpoint(small, frontier, diff(0.08, 0.03, 0.13))
    assert ahead["choice"] == "tuned" and ahead["cost_ratio"] == pytest.approx(60.0)
    assert ahead["latency_ratio"] == pytest.approx(22.5) and "60.0× the tuned model's cost" in ahead["text"]
    behind = versus_endpoint(small, frontier, diff(-0.10, -0.15, -MARGIN - 0.001))
    assert behind["choice"] == "endpoint" and "beats the tuned model" in behind["text"]
    # level (the interval reaches within MARGIN of zero, or spans it): the cheaper one
    assert versus_endpoint(small, frontier, diff(-0.03, -0.06, -MARGIN + 0.001))["choice"] == "tuned"
    assert versus_endpoint(row("tuned", 40.0, 5.0), frontier, diff(0.0, -0.04, 0.04))["choice"] == "endpoint"
    # the tuned model unpriced (no eval.machine_price_per_hour): cheaper than any priced endpoint
    assert versus_endpoint(row("tuned", 40.0, None), frontier, diff(0.0, -0.04, 0.04))["choice"] == "tuned"
    # neither priced: the faster
    assert (
        versus_endpoint(row("tuned", 40.0, None), row("e", 20.0, None), diff(0.0, -0.04, 0.04))["choice"] == "endpoint"
    )


def write_result(path, label, scores, kind_fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = path.with_name(path.stem + "_predictions.jsonl")
    preds.write_text(
        "".join(
            json.dumps({"index": i, "source": f"test.jsonl:{i + 1}", "exact_match": s}) + "\n"
            for i, s in enumerate(scores)
        )
    )
    mean = sum(scores) / len(scores)
    path.write_text(
        json.dumps(
            {
                "label": label,
                "n": len(scores),
                "prompt_tokens": 20.0,
                "predictions": preds.name,
                "scores": {"exact_match": {"mean": mean, "lo": mean - 0.05, "hi": mean + 0.05}},
                **kind_fields,
            }
        )
    )
    return preds


def test_the_report_pairs_the_tuned_model_with_the_endpoint_over_the_same_examples(tmp_path):
    from tunesmith.report.build import write_report

    run = tmp_path / "run"
    tuned = [1.0] * 60 + [0.0] * 40
    frontier = [1.0] * 50 + [0.0] * 10 + [1.0] * 20 + [0.0] * 20  # right on 70, 50 of them where tuned is right
    preds = write_result(run / "eval" / "test.json", "tuned", tuned, {"latency_s": 0.05, "cost_per_1000": 0.01})
    preds.rename(run / "eval" / "test_predictions.jsonl")
    data = json.loads((run / "eval" / "test.json").read_text())
    (run / "eval" / "test.json").write_text(json.dumps({**data, "predictions": "test_predictions.jsonl"}))
    write_result(
        run / "baselines" / "endpoint-gpt-x-shots-0.json",
        "gpt-x, zero-shot",
        frontier,
        {"kind": "endpoint", "latency_s": 0.8, "cost_per_1000": 2.0},
    )
    write_report(run, [("lora", run)], baselines_dir=run, primary="exact_match")
    report = json.loads((run / "report.json").read_text())
    weighed = report["recommendation"]["endpoint"]
    assert weighed["difference"]["mean"] == pytest.approx(-0.10) and weighed["difference"]["n"] == 100
    assert weighed["cost_ratio"] == pytest.approx(200.0) and weighed["latency_ratio"] == pytest.approx(16.0)
    assert weighed["choice"] == ("endpoint" if weighed["difference"]["hi"] < -MARGIN else "tuned")
    md = (run / "report.md").read_text()
    assert "gpt-x, zero-shot (endpoint)" in md and "$2.00" in md and weighed["text"] in md


@pytest.fixture
def served(tmp_path, tiny_model_dir):
    line, proc = start_server(
        ["serve", str(tiny_model_dir), "--port", "0", "--api-key-env", "TS_SERVE_KEY", "--precision", "fp32"],
        tmp_path,
        {**cli_env(tmp_path), "TS_SERVE_KEY": KEY},
    )
    yield {"url": line.split(" at ")[1].split()[0], "model": tiny_model_dir.name, "proc": proc}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_an_endpoint_baseline_against_a_live_tunesmith_serve(tmp_path, tiny_model_dir, date_data, served, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))  # the reply cache lives here
    monkeypatch.setenv("ENDPOINT_KEY", KEY)
    baseline = {
        "url": served["url"],
        "model": served["model"],
        "api_key_env": "ENDPOINT_KEY",
        "label": "served base",
        "price_per_1m_input": 2.5,
        "price_per_1m_output": 10.0,
        "shots": [0, 2],
    }
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 4, "precision": "fp32"},
        eval={
            "test": str(date_data["test"]),
            "limit": 8,
            "max_new_tokens": 8,
            "shots": [0],
            "baselines": [baseline],
            "machine_price_per_hour": 1.0,
        },
    )
    summary = train(load_config(cfg), quiet=True)
    run_dir = tmp_path / "runs" / "tiny"
    zero, two = summary["endpoint_baselines"]
    assert (zero["label"], two["label"], zero["requests_sent"], two["requests_sent"]) == (
        "served base, zero-shot",
        "served base, 2-shot",
        8,
        8,
    )
    # the same base model, asked the same prompts, greedy: the endpoint's replies are the local baseline's
    local = read_jsonl(run_dir / "baselines" / "shots-0_predictions.jsonl")
    remote = read_jsonl(run_dir / "baselines" / "endpoint-served-base-shots-0_predictions.jsonl")
    assert [r["prediction"] for r in remote] == [r["prediction"] for r in local]
    assert [r["prompt_tokens"] for r in remote] == [r["prompt_tokens"] for r in local]  # counted alike
    assert zero["scores"]["exact_match"] == summary["baselines"][0]["scores"]["exact_match"]
    expected = 1000 * (zero["prompt_tokens"] * 2.5 + zero["completion_tokens"] * 10.0) / 1e6
    assert zero["cost_per_1000"] == pytest.approx(expected) and zero["latency_s"] > 0
    assert two["prompt_tokens"] > zero["prompt_tokens"]  # the in-context examples are in the prompt
    report = json.loads((run_dir / "report.json").read_text())
    assert {r["label"] for r in report["task"] if r["kind"] == "endpoint"} == {zero["label"], two["label"]}
    assert report["recommendation"]["endpoint"]["endpoint"] in (zero["label"], two["label"])

    # compare scores the endpoint once for all its variants; the same requests come from the cache
    from tunesmith.compare import run_compare

    cmp_cfg = load_config(cfg, ["name=cmp", "compare.variants={a: {}, b: {train.lr: 1.0e-3}}"])
    compared = run_compare(cmp_cfg, quiet=True)
    sent = [
        json.loads(p.read_text())["requests_sent"]
        for p in (tmp_path / "runs" / "cmp" / "baselines").glob("endpoint-*-shots-?.json")
    ]
    assert sent == [0, 0]
    assert sum(r["kind"] == "endpoint" for r in compared["summary"]["task"]) == 2

    # cached: with the server gone, the same baseline scores again without a request
    served["proc"].send_signal(signal.SIGTERM)
    served["proc"].wait(timeout=30)
    again = cli(
        [
            "eval",
            served["url"],
            "--endpoint-model",
            served["model"],
            "--api-key-env",
            "ENDPOINT_KEY",
            "--data",
            str(date_data["test"]),
            "--limit",
            "8",
            "--max-new-tokens",
            "8",
            "--price-in",
            "2.5",
            "--price-out",
            "10",
        ],
        tmp_path,
        {"TUNESMITH_HOME": str(tmp_path / "home"), "ENDPOINT_KEY": KEY},
    )
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads(again.stdout)
    assert result["requests_sent"] == 0 and result["scores"] == zero["scores"]
    assert result["cost_per_1000"] == pytest.approx(zero["cost_per_1000"])


def test_an_unreachable_endpoint_is_one_clear_error(tmp_path, date_data):
    done = cli(
        ["eval", "http://127.0.0.1:9/v1", "--endpoint-model", "m", "--data", str(date_data["test"]), "--limit", "1"],
        tmp_path,
        {"TUNESMITH_HOME": str(tmp_path / "home")},
    )
    assert done.returncode != 0 and "127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr


def test_the_documented_quickstart_command_sets_an_endpoint_baseline(tmp_path):
    """docs/experiments.md's `tunesmith quickstart --set 'eval.baselines=[...]'`, as the quickstart reads it."""
    import re
    from pathlib import Path

    from tunesmith.config import apply_override, validate_config
    from tunesmith.quickstart import quickstart_config

    doc = (Path(__file__).parent.parent / "docs" / "experiments.md").read_text()
    [assignment] = re.findall(r"tunesmith quickstart --set '([^']+)'", doc)
    tree = quickstart_config(tmp_path, "dates", "smollm2-135m-instruct", 40, None)
    apply_override(tree, assignment)
    [baseline] = validate_config(tree, "quickstart").eval.baselines
    assert baseline.url == "https://api.openai.com/v1" and baseline.api_key_env == "OPENAI_API_KEY"
    assert baseline.price_per_1m_input == 0.4 and baseline.price_per_1m_output == 1.6
