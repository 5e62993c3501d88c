"""Every registered method shows the engine the one complete face, `methods.base.Method`."""

from __future__ import annotations

import pytest

from tunesmith.config import METHODS as CONFIG_METHODS
from tunesmith.methods import METHODS
from tunesmith.methods.base import Method


def test_config_and_registry_name_the_same_methods():
    assert set(CONFIG_METHODS) == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_subclasses_method_and_implements_its_three_hooks(name):
    cls = METHODS[name]
    assert issubclass(cls, Method)
    for hook in ("features", "collate", "loss"):  # the base raises NotImplementedError for these
        assert getattr(cls, hook) is not getattr(Method, hook), f"{name} does not implement {hook}"
    assert cls.head in ("causal", "score") and cls.steps_per_batch >= 1


def test_the_base_refuses_to_stand_in_for_a_method():
    m = Method(None)
    assert (m.truncated, m.dropped, m.kl_anchor, m.head, m.steps_per_batch) == (0, 0, None, "causal", 1)
    with pytest.raises(NotImplementedError):
        m.loss(None, {})
