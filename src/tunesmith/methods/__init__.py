"""What is optimized. Each method is a small object with one face (`engine.method.Method`, the
contract the engine defines), registered by name in config/methods.py and built here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tunesmith.config.methods import METHODS

if TYPE_CHECKING:
    from tunesmith.config.schema import RunConfig
    from tunesmith.engine.method import Method


def method_class(name: str) -> type[Method]:
    """The class registered for a method name (imported on first use)."""
    module, _, cls = METHODS[name].implementation.partition(":")
    found: type[Method] = getattr(importlib.import_module(module), cls)
    return found


def build_method(name: str, config: RunConfig) -> Method:
    """The method `config` asks for under a registered name (the registered class's `variant`)."""
    return method_class(name).variant(config)(config)
