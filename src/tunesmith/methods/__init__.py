"""What is optimized. Each method is a small object with one face (see base.Method)."""

from tunesmith.methods.base import Method
from tunesmith.methods.sft import SFT

METHODS: dict[str, type] = {"sft": SFT}


def build_method(name: str, config) -> Method:
    return METHODS[name](config)
