"""What is optimized. Each method is a small object with one face (`engine.method.Method`, the
contract the engine defines), registered by name in config/methods.py and built here."""

from __future__ import annotations

import importlib

from tunesmith.config.methods import METHODS
from tunesmith.engine.method import Method


def method_class(name: str) -> type[Method]:
    """The class registered for a method name (imported on first use)."""
    module, _, cls = METHODS[name].implementation.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, config) -> Method:
    """The method `config` asks for under a registered name (the registered class's `variant`)."""
    return method_class(name).variant(config)(config)
