"""Put the configured adapter on a base model: none (full fine-tuning) or LoRA through PEFT."""

from __future__ import annotations

import re

from tunesmith.config import AdapterConfig
from tunesmith.methods.base import unwrap

# Target presets by role; names cover Llama/Mistral/Qwen/Gemma-style and GPT-2/NeoX-style blocks.
TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "query_key_value", "dense"],
    "mlp": ["gate_proj", "up_proj", "down_proj", "c_fc", "c_proj", "dense_h_to_4h", "dense_4h_to_h"],
}


def lora_targets(model, targets: str | list[str]):
    """Preset name -> module names present in this model; explicit lists pass through."""
    if isinstance(targets, list):
        return targets
    if targets == "all-linear":
        return "all-linear"
    if targets in TARGET_PRESETS:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        found = [t for t in TARGET_PRESETS[targets] if t in present]
        if not found:
            from tunesmith.errors import UserError

            raise UserError(f"adapter.targets: preset '{targets}' matches no module of this model; name modules explicitly")
        return found
    return [t.strip() for t in targets.split(",") if t.strip()]


def apply_adapter(model, cfg: AdapterConfig):
    """Return the model to train. Full fine-tuning trains every weight; LoRA freezes the base."""
    if cfg.type == "none":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg.targets),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        from tunesmith.errors import UserError

        raise UserError(f"adapter.targets: {str(e).splitlines()[0][:200]}") from None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def freeze_lower_layers(model, n: int) -> int:
    """Stop training the lowest `n` decoder layers (and the input embeddings, which sit below
    them; with tied embeddings that freezes the output head too). Returns parameters frozen."""
    if n <= 0:
        return 0
    layers = {int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER_INDEX.search(name))}
    if n > len(layers):
        from tunesmith.errors import UserError

        raise UserError(f"forgetting.freeze_layers: {n}, but the model has {len(layers)} decoder layers")
    frozen = 0
    embeddings = {id(p) for p in unwrap(model).get_input_embeddings().parameters()}
    for name, p in model.named_parameters():
        m = _LAYER_INDEX.search(name)
        if p.requires_grad and ((m and int(m.group(1)) < n) or id(p) in embeddings):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
