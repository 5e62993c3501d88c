"""Metric functions and the bootstrap against values computed by hand."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tunesmith.errors import UserError
from tunesmith.eval import metrics
from tunesmith.eval.bootstrap import bootstrap_ci, paired_bootstrap_ci, percentile_interval


def test_exact_and_normalized_match():
    assert metrics.exact_match("2021-03-04", " 2021-03-04\n") == 1.0
    assert metrics.exact_match("Paris.", "Paris") == 0.0
    assert metrics.normalized_exact_match("  The   ANSWER. ", "the answer") == 1.0
    assert metrics.normalized_exact_match("the answers", "the answer") == 0.0


def test_token_f1_by_hand():
    # pred words: [cat, sat, on, mat] (article dropped); ref: [cat, sat]; overlap 2
    # precision 2/4, recall 2/2 -> F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert metrics.token_f1("The cat sat on the mat", "cat sat") == pytest.approx(2 / 3)
    # multiset overlap: pred [dog, dog, dog], ref [dog] -> P=1/3, R=1 -> F1=0.5
    assert metrics.token_f1("dog dog dog", "dog") == pytest.approx(0.5)
    assert metrics.token_f1("seven", "7") == 1.0  # number words are digits
    assert metrics.token_f1("", "") == 1.0
    assert metrics.token_f1("x", "") == 0.0
    assert metrics.token_f1("blue", "red") == 0.0


def test_contains_answer_is_tolerant_to_phrasing_but_not_to_partial_words():
    assert metrics.contains_answer("The capital of France is Paris.", ["Paris"]) == 1.0
    assert metrics.contains_answer("A spider has eight legs.", ["8"]) == 1.0
    assert metrics.contains_answer("It has 1,000 meters.", ["1000"]) == 1.0
    assert metrics.contains_answer("About 149.5 trillion.", ["5"]) == 0.0  # a decimal is one number
    assert metrics.contains_answer("Parisian food", ["Paris"]) == 0.0
    assert metrics.contains_answer("New York City", ["New York", "NYC"]) == 1.0


def test_json_validity_and_field_accuracy_by_hand():
    ref = '{"name": "Ada", "year": 1815, "city": "London"}'
    # two of three fields equal -> 2/3
    assert metrics.json_scores('{"name": "Ada", "year": 1815, "city": "Paris"}', ref) == {
        "json_valid": 1.0,
        "json_field_accuracy": pytest.approx(2 / 3),
    }
    assert metrics.json_scores('```json\n{"name": "Ada"}\n```', ref)["json_field_accuracy"] == pytest.approx(1 / 3)
    assert metrics.json_scores("name: Ada", ref) == {"json_valid": 0.0, "json_field_accuracy": 0.0}
    assert metrics.json_scores("anything", "plain text answer") is None
    assert "json_valid" in metrics.score('{"a": 1}', '{"a": 1}') and "json_valid" not in metrics.score("a", "a")


def test_user_metric_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "def starts_with_digit(p, r):\n    return p[:1].isdigit()\n"
        "def lengths(p, r):\n    return {'ratio': len(p) / len(r)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name, fn = metrics.load_user_metric("my_metrics:starts_with_digit")
    assert metrics.apply_user_metric(name, fn, "2021", "x") == {"starts_with_digit": 1.0}
    name, fn = metrics.load_user_metric("my_metrics:lengths")
    assert metrics.apply_user_metric(name, fn, "ab", "abcd") == {"lengths.ratio": 0.5}
    for bad, says in [
        ("nocolon", "module:function"),
        ("no_such_module_x:f", "cannot import"),
        ("my_metrics:nope", "no function"),
    ]:
        with pytest.raises(UserError, match=says):
            metrics.load_user_metric(bad)
    sys.modules.pop("my_metrics", None)


def test_percentile_interval_by_hand():
    # 0..100: the 2.5th and 97.5th percentiles with linear interpolation are 2.5 and 97.5
    assert percentile_interval(range(101), 0.95) == pytest.approx((2.5, 97.5))
    assert percentile_interval([4.0, 4.0, 4.0]) == (4.0, 4.0)


def test_bootstrap_of_two_values_matches_its_exact_distribution():
    # resampling [0, 1] twice: mean 0 (p=1/4), 0.5 (p=1/2), 1 (p=1/4). The 95% interval spans
    # [0, 1]; a 40% interval (30th..70th percentile) is the middle value 0.5.
    ci = bootstrap_ci([0, 1], resamples=20000, seed=1)
    assert ci["mean"] == 0.5 and (ci["lo"], ci["hi"]) == (0.0, 1.0) and ci["n"] == 2
    narrow = bootstrap_ci([0, 1], confidence=0.4, resamples=20000, seed=1)
    assert (narrow["lo"], narrow["hi"]) == (0.5, 0.5)


def test_bootstrap_interval_width_follows_the_binomial_standard_error():
    # 100 items, 80 correct: SE = sqrt(0.8 * 0.2 / 100) = 0.04, so 95% ~ +-1.96 * 0.04 = +-0.078
    values = [1] * 80 + [0] * 20
    ci = bootstrap_ci(values, resamples=4000, seed=0)
    assert ci["mean"] == 0.8
    assert ci["hi"] - ci["lo"] == pytest.approx(2 * 1.96 * 0.04, abs=0.02)
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values, seed=0)  # seeded: reproducible


def test_paired_bootstrap_is_on_differences():
    before = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1])
    after = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1])  # two items lost
    d = paired_bootstrap_ci(before, after)
    assert d["mean"] == pytest.approx(-0.2)
    assert d["lo"] <= -0.2 <= d["hi"] and d["hi"] <= 0.0  # never gains: no resample can be positive
    same = paired_bootstrap_ci(before, before)
    assert (same["mean"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1, 0], [1])
