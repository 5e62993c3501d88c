"""Every registered method builds as the one face the engine knows, `engine.method.Method` (its
abstract hooks, which `abc` holds every subclass to), and the one registry (config/methods.py) is
what config validation and method building both read."""

from __future__ import annotations

import pytest

from tunesmith.config import METHODS, validate_config
from tunesmith.engine.method import Method
from tunesmith.errors import UserError
from tunesmith.methods import build_method, method_class

MINIMAL = {"name": "r", "data": {"train": "d.jsonl"}, "train": {"max_steps": 1}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_registered_name_builds_a_method_the_engine_can_drive(name):
    extra = {"rl": {"rewards": [{"function": "json_valid"}]}, "distill": {"teacher": "t"}}
    method = build_method(name, validate_config({**MINIMAL, **extra, "method": name}))  # abc: every hook implemented
    assert isinstance(method, Method) and issubclass(method_class(name), Method)
    assert method.head in ("causal", "score") and method.steps_per_batch >= 1


def test_config_validation_accepts_exactly_the_registered_names():
    extra = {"rl": {"rewards": [{"function": "json_valid"}]}, "distill": {"teacher": "t"}}
    for name in METHODS:
        assert validate_config({**MINIMAL, **extra, "method": name}).method == name
    with pytest.raises(UserError, match=r"method: Input should be 'sft', 'dpo'.*'distill'"):
        validate_config({**MINIMAL, "method": "ppo"})


def test_one_class_per_method_where_one_name_covers_two():
    from tunesmith.methods.grpo import GRPO, RLOO
    from tunesmith.methods.preference import KTO, PairedPreference

    rl = {"rl": {"rewards": [{"function": "json_valid"}]}}
    rloo = build_method("rloo", validate_config({**MINIMAL, **rl, "method": "rloo"}))
    assert type(rloo) is RLOO and rloo.name == "rloo"
    assert type(build_method("grpo", validate_config({**MINIMAL, **rl, "method": "grpo"}))) is GRPO
    for loss, cls in (("kto", KTO), ("sigmoid", PairedPreference), ("orpo", PairedPreference)):
        cfg = validate_config({**MINIMAL, "method": "dpo", "preference": {"loss": loss}})
        assert type(build_method("dpo", cfg)) is cls
