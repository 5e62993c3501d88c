"""What is optimized. Each method is a small object with one face (base.Method), registered by
name in config/methods.py and built here."""

from __future__ import annotations

import importlib

from tunesmith.config.methods import METHODS
from tunesmith.methods.base import Method


def method_class(name: str) -> type[Method]:
    """The class registered for a method name (imported on first use)."""
    module, _, cls = METHODS[name].implementation.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, config) -> Method:
    return method_class(name)(config)
