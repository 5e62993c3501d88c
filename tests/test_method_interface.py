"""Every registered method shows the engine the one complete face, `methods.base.Method`, and the
one registry (config/methods.py) is what config validation and method building both read."""

from __future__ import annotations

import pytest

from tunesmith.config import METHODS, validate_config
from tunesmith.errors import UserError
from tunesmith.methods import build_method, method_class
from tunesmith.methods.base import Method

MINIMAL = {"name": "r", "data": {"train": "d.jsonl"}, "train": {"max_steps": 1}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_subclasses_method_and_implements_its_three_hooks(name):
    cls = method_class(name)
    assert issubclass(cls, Method)
    for hook in ("features", "collate", "loss"):  # the base raises NotImplementedError for these
        assert getattr(cls, hook) is not getattr(Method, hook), f"{name} does not implement {hook}"
    assert cls.head in ("causal", "score") and cls.steps_per_batch >= 1


def test_config_validation_accepts_exactly_the_registered_names():
    extra = {"rl": {"rewards": [{"function": "json_valid"}]}, "distill": {"teacher": "t"}}
    for name in METHODS:
        assert validate_config({**MINIMAL, **extra, "method": name}).method == name
    with pytest.raises(UserError, match=r"method: Input should be 'sft', 'dpo'.*'distill'"):
        validate_config({**MINIMAL, "method": "ppo"})


def test_a_built_method_carries_the_name_it_was_registered_under():
    cfg = validate_config({**MINIMAL, "method": "rloo", "rl": {"rewards": [{"function": "json_valid"}]}})
    assert build_method("rloo", cfg).name == "rloo"
    assert method_class("rloo") is method_class("grpo")


def test_the_base_refuses_to_stand_in_for_a_method():
    m = Method(None)
    assert (m.truncated, m.dropped, m.kl_anchor, m.head, m.steps_per_batch) == (0, 0, None, "causal", 1)
    with pytest.raises(NotImplementedError):
        m.loss(None, {})
