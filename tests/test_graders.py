"""OpenAI's graders as online-RL rewards: each against hand-computed values, the python grader's
limits, the formula of a multi grader, and GRPO raising a grader's reward on the tiny model."""

import json

import pytest
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.config.graders import GraderSpec
from tunesmith.errors import UserError
from tunesmith.methods.graders import build_grader, render, sample_of


def grade(spec: dict, replies: list[str], items: list[dict] | None = None) -> list[float]:
    grader = build_grader(GraderSpec(grader=spec).grader)
    return grader([sample_of(r) for r in replies], items or [{} for _ in replies])


def test_templates_read_the_reply_and_the_record():
    item = {"answer": "Paris", "meta": {"tags": ["a", "b"]}, "n": 3}
    sample = sample_of('{"city": "Paris"}')
    assert render("{{ sample.output_json.city }}={{item.answer}}", sample, item) == "Paris=Paris"
    assert (
        render("{{item.meta.tags}} {{item.meta.tags.1}} {{item.n}} [{{item.missing}}]", sample, item)
        == '["a", "b"] b 3 []'
    )


def test_string_check_operations():
    spec = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    items = [{"answer": "Paris"}] * 4
    replies = ["Paris", "paris", "It is Paris.", "It is paris."]
    assert grade({**spec, "operation": "eq"}, replies, items) == [1, 0, 0, 0]
    assert grade({**spec, "operation": "ne"}, replies, items) == [0, 1, 1, 1]
    assert grade({**spec, "operation": "like"}, replies, items) == [1, 0, 1, 0]
    assert grade({**spec, "operation": "ilike"}, replies, items) == [1, 1, 1, 1]


def test_text_similarity_is_the_libraries_scores_as_computed_by_hand():
    def sim(metric, a, b):
        return grade(
            {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": b, "evaluation_metric": metric},
            [a],
        )[0]

    cand, ref = "the cat sat on the mat", "the cat sat on a mat"
    # sacrebleu: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 (none zero: no smoothing); equal lengths: no brevity
    # penalty
    assert sim("bleu", cand, ref) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert sim("rouge_1", cand, ref) == pytest.approx(5 / 6)  # rouge-score: "the" counts once in the reference
    assert sim("bleu", ref, ref) == pytest.approx(1.0)
    # GLEU: all 1..4-grams, 5+3+2+1 = 11 matches of 6+5+4+3 = 18 in each: min(11/18, 11/18)
    assert sim("gleu", cand, ref) == pytest.approx(11 / 18)
    assert sim("rouge_1", "the cat sat", "the cat ran") == pytest.approx(2 / 3)
    assert sim("rouge_2", "the cat sat", "the cat ran") == pytest.approx(1 / 2)
    assert sim("rouge_l", "a b c d", "a c d") == pytest.approx(2 * 0.75 / 1.75)  # LCS 3: P 3/4, R 1
    assert sim("fuzzy_match", "abcd", "abce") == pytest.approx(0.75)
    assert sim("rouge_1", "", "x") == 0.0


def test_python_grader_scores_and_survives_what_user_code_does():
    source = """
import time
def grade(sample, item):
    text = sample["output_text"]
    print("noise on stdout")  # must not be taken for an answer
    if text == "loop":
        while True: pass
    if text == "hog":
        x = bytearray(2 << 30)
    if text == "fail":
        raise ValueError("nope")
    if text == "nan":
        return float("nan")
    return len(text) / item["target"]
"""
    spec = GraderSpec(
        grader={"type": "python", "name": "len", "source": source, "timeout_s": 2, "memory_mb": 256}
    ).grader
    grader = build_grader(spec)
    scores = grader([sample_of(t) for t in ["ab", "loop", "abcd", "hog", "fail", "nan", "abc"]], [{"target": 4}] * 7)
    assert scores == [0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.75]  # the loop, the hog, the raise and NaN score 0 ...
    assert grader.errors == 4  # ... and are counted; the process is restarted after each kill
    with pytest.raises(UserError, match="failed to load"):
        build_grader(
            GraderSpec(
                grader={"type": "python", "name": "x", "source": "def grade(s, i): pass\nraise SystemExit"}
            ).grader
        )
    with pytest.raises(ValueError, match="must define grade"):
        GraderSpec(grader={"type": "python", "source": "def other(): pass"})


def test_multi_grader_combines_by_formula_and_refuses_anything_else():
    spec = {
        "type": "multi",
        "graders": {
            "exact": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            },
            "close": {
                "type": "text_similarity",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.5 * exact + 0.5 * max(close, 0.2) - abs(-0.1)",
    }
    assert grade(spec, ["abcd", "abce"], [{"answer": "abcd"}] * 2) == pytest.approx([0.9, 0.275])
    for formula, message in [
        ("__import__('os')", "only min"),
        ("exact.real", "Attribute"),
        ("nope + 1", "not one of the graders"),
        ("'a'", "not a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            GraderSpec(grader={**spec, "calculate_output": formula})


def test_score_model_reads_a_number_clamped_to_its_range(tiny_model_dir):
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": str(tiny_model_dir),
        "range": [0, 10],
        "input": [{"role": "user", "content": "Score 0-10: {{sample.output_text}} vs {{item.answer}}"}],
    }
    grader = build_grader(GraderSpec(grader=spec).grader)
    assert [grader.score(r) for r in ["7", "score: 12.5", "-3", "no idea", "1e1"]] == [7.0, 10.0, 0.0, 0.0, 10.0]
    scores = grader([sample_of("Paris")] * 2, [{"answer": "Paris"}] * 2)  # the tiny random model, end to end
    assert len(scores) == 2 and all(0 <= s <= 10 for s in scores)


def test_a_reward_spec_takes_exactly_one_source(tmp_path, tiny_model_dir, date_data):
    grader = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        method="grpo",
        rl={"rewards": [{"function": "json_valid", "grader": grader}]},
    )
    with pytest.raises(UserError, match="set exactly one of function, model, grader"):
        load_config(cfg)


def test_grpo_raises_a_python_graders_reward_on_openai_reinforcement_records(tmp_path, tiny_model_dir, date_data):
    """OpenAI's reinforcement records (messages + fields the grader reads), a python grader: the
    share of digits in the reply, times the record's own weight field; GRPO raises it."""
    rows = [
        {"messages": [m for m in r["messages"] if m["role"] != "assistant"], "weight_of_digits": 10}
        for r in read_jsonl(date_data["train"])
    ]
    data = tmp_path / "rft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = (
        "def grade(sample, item):\n    t = sample['output_text']\n"
        "    return item['weight_of_digits'] * sum(c.isdigit() for c in t) / max(1, len(t))\n"
    )
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        {"train": data, "val": date_data["val"]},
        tmp_path / "runs",
        method="grpo",
        train={"max_steps": 40, "lr": 2e-2, "batch_size": 4, "log_every": 10},
        rl={
            "rewards": [{"grader": {"type": "python", "name": "digits", "source": source}}],
            "group_size": 4,
            "max_new_tokens": 12,
        },
    )
    tree = __import__("yaml").safe_load(cfg.read_text())
    tree["data"] = {
        "train": [{"path": str(data), "format": "openai_reinforcement"}],
        "val": {"path": str(data), "format": "openai_reinforcement"},
        "max_length": 256,
    }
    cfg.write_text(__import__("yaml").safe_dump(tree))
    from tunesmith.run import train

    train(load_config(cfg), quiet=True)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert records[-1]["reward"] > records[0]["reward"] + 2, (records[0], records[-1])
