"""The model a run trains: the base (a language model or a reward model's scalar head), an
earlier adapter folded in, the configured adapter on top, lower layers frozen if asked."""

from __future__ import annotations

import random

import torch

from tunesmith.config import RunConfig
from tunesmith.errors import UserError
from tunesmith.model.adapters import apply_adapter, can_merge, freeze_lower_layers
from tunesmith.model.load import is_reward_checkpoint, load_base
from tunesmith.runtime.precision import inference_dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def base_quantization(cfg: RunConfig) -> dict | None:
    """QLoRA's quantization settings (compute in the run's precision); None for other types."""
    if cfg.adapter.type != "qlora":
        return None
    from tunesmith.model.quantize import settings

    return settings(cfg.adapter, inference_dtype(cfg.train.precision))


def build_model(cfg: RunConfig, resolved, tokenizer=None, head: str = "causal"):
    """The model to train: the base (a language model, or with `head="score"` a scalar-head
    reward model), a LoRA run's adapter folded in, then the configured adapter on top."""
    model = load_base(resolved.path, torch.float32, base_quantization(cfg), head=head)
    if head == "score":
        if tokenizer is not None:
            model.config.pad_token_id = tokenizer.pad_token_id  # saved with it: plain transformers can batch it
        if not is_reward_checkpoint(resolved):  # a new head starts at zero: every score 0, first loss ln 2
            torch.nn.init.zeros_(model.score.weight)
    if resolved.adapter is not None:  # continue from an adapter run: its adapter becomes part of the base
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if not can_merge(model):
            raise UserError(
                f"model: {resolved.adapter.parent}: a {model.active_peft_config.peft_type.value.lower()} "
                "adapter cannot fold into the base to train on; start from its base model"
            )
        model = model.merge_and_unload()
    seed_everything(cfg.train.seed)
    if cfg.train.gradient_checkpointing:
        # non-reentrant: gradients reach adapter weights even when the inputs need none
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.x; older: gradient_…
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_adapter(model, cfg.adapter, tokenizer, task_type="SEQ_CLS" if head == "score" else "CAUSAL_LM")
    freeze_lower_layers(model, cfg.forgetting.freeze_layers)
    return model
