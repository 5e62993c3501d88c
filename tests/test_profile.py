"""train.profile_steps writes where a step's time goes."""

import re

from helpers import write_config

from tunesmith.config import load_config
from tunesmith.engine.profile import group_of
from tunesmith.run import train


def test_profile_of_a_few_steps_adds_up_and_names_the_matmuls(tmp_path, tiny_model_dir, date_data):
    cfg_path = write_config(
        tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", train={"max_steps": 6, "profile_steps": 3}
    )
    train(load_config(cfg_path), quiet=True)
    text = (tmp_path / "runs" / "tiny" / "profile.txt").read_text()
    assert text.startswith("3 steps profiled after 2 warm-up steps")
    shares = [float(s) for s in re.findall(r"s/step\s+([\d.]+)%", text)]
    assert abs(sum(shares) - 100) < 0.5 and "matmul" in text and "optimizer" in text


def test_operators_fall_into_their_groups():
    assert group_of("aten::mm") == group_of("aten::addmm") == "matmul"
    assert group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert group_of("aten::_log_softmax_backward_data") == "loss (log-softmax, cross-entropy)"
    assert group_of("aten::_foreach_addcdiv_") == "optimizer"
    assert group_of("aten::_to_copy") == group_of("aten::copy_") == "casts and copies"
    assert group_of("aten::mul") == group_of("aten::silu_backward") == "elementwise and norms"
    assert group_of("aten::topk") == "other"
