"""What a PEFT-wrapped model is underneath: helpers every layer that holds a model needs."""

from __future__ import annotations


def unwrap(model):
    """The transformers model under a PEFT wrapper (adapter layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_prompt_learning(model) -> bool:
    """Prefix and prompt tuning act through virtual tokens in the PEFT forward pass, not on weights."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)
