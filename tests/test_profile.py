"""train.profile_steps writes where a step's time goes."""

import re

import pytest
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.engine.profile import group_of
from tunesmith.run import train


def test_profile_of_a_few_steps_adds_up_and_names_the_matmuls(tmp_path, tiny_model_dir, date_data):
    cfg_path = write_config(
        tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", train={"max_steps": 6, "profile_steps": 3}
    )
    train(load_config(cfg_path), quiet=True)
    text = (tmp_path / "runs" / "tiny" / "profile.txt").read_text()
    head = re.match(r"3 steps profiled after 2 warm-up steps: ([\d.]+) s per step, (\d+) tokens/s", text)
    assert head, text[:200]
    seconds, tokens_per_s = float(head[1]), int(head[2])
    # the profiled steps are 3, 4 and 5: their tokens, as the metrics log counts them
    tokens = {r["step"]: r["tokens"] for r in read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")}
    # (as printed: seconds to 0.001, tokens/s to 1; the product is off by at most what that rounding allows)
    rounding = 3 * (0.0005 * tokens_per_s + 0.5 * seconds + 0.0005 * 0.5)
    assert tokens_per_s * seconds * 3 == pytest.approx(tokens[5] - tokens[2], rel=1e-9, abs=rounding + 1e-6)
    # operators' own time, on the thread that runs them, fits within the steps' wall time and is most of it
    group_seconds = [float(x) for x in re.findall(r"^  [a-z(),\- ]+?\s+([\d.]+) s/step", text, re.M)]
    assert 0.3 * seconds < sum(group_seconds) < 1.05 * seconds, (group_seconds, seconds)
    assert "matmul" in text and "optimizer" in text


def test_operators_fall_into_their_groups():
    assert group_of("aten::mm") == group_of("aten::addmm") == "matmul"
    assert group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert group_of("aten::_log_softmax_backward_data") == "loss (log-softmax, cross-entropy)"
    assert group_of("aten::_foreach_addcdiv_") == "optimizer"
    assert group_of("aten::_to_copy") == group_of("aten::copy_") == "casts and copies"
    assert group_of("aten::mul") == group_of("aten::silu_backward") == "elementwise and norms"
    assert group_of("aten::topk") == "other"
