"""What a PEFT-wrapped model is underneath: helpers every layer that holds a model needs."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from torch.nn import Module


def unwrap(model: Module) -> Any:
    """The transformers model under a PEFT wrapper (adapter layers stay in place); typed Any
    because callers reach for what its own class has (`get_decoder`, `score`, ...)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def adapter_off(model: Module) -> AbstractContextManager[Any]:
    """The PEFT model with its adapter switched off for the block (`disable_adapter`)."""
    disable = model.disable_adapter
    assert callable(disable)
    return cast(AbstractContextManager[Any], disable())


def is_prompt_learning(model) -> bool:
    """Prefix and prompt tuning act through virtual tokens in the PEFT forward pass, not on weights."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)
