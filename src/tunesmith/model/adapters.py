"""Put the configured adapter on a base model, all through PEFT: LoRA (rsLoRA, DoRA), QLoRA
(LoRA over a bitsandbytes-quantized base), IA3, prefix and prompt tuning; or full fine-tuning,
whole or partial (`adapter.freeze`)."""

from __future__ import annotations

import re

import torch

from tunesmith import atomic
from tunesmith.config import AdapterConfig, FreezeConfig
from tunesmith.errors import UserError, first_line
from tunesmith.model.peft_wrapping import is_prompt_learning, unwrap

_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")

# Target presets by role; names cover Llama/Mistral/Qwen/Gemma-style, Phi-3's fused qkv_proj and
# gate_up_proj, and GPT-2/NeoX-style blocks.
TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "c_attn", "query_key_value", "dense"],
    "mlp": ["gate_proj", "up_proj", "gate_up_proj", "down_proj", "c_fc", "c_proj", "dense_h_to_4h", "dense_4h_to_h"],
}


def linear_module_names(model) -> list[str]:
    """Leaf names of the model's linear layers, the output head excepted (what `all-linear` means)."""
    head = unwrap(model).get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is not head and isinstance(m, torch.nn.Linear)
    }
    return sorted(names)


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
            raise UserError(
                f"adapter.targets: preset '{targets}' matches no module of this model; name modules explicitly"
            )
        return found
    return [t.strip() for t in targets.split(",") if t.strip()]


def peft_config(model, cfg: AdapterConfig, task_type: str = "CAUSAL_LM"):
    """The PEFT config for an adapter type. `SEQ_CLS` (reward models) also trains and saves the
    new score head in full (PEFT's modules_to_save)."""
    import peft

    if cfg.type in ("lora", "qlora"):
        return peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # PEFT's annotation says int; a float scale is what it computes with
            lora_dropout=cfg.dropout,
            use_rslora=cfg.rslora,
            use_dora=cfg.dora,
            target_modules=lora_targets(model, cfg.targets),
            task_type=task_type,
        )
    if cfg.type == "ia3":
        targets = lora_targets(model, cfg.targets)
        targets = linear_module_names(model) if targets == "all-linear" else targets
        # IA3 scales a feed-forward layer's input and every other layer's output
        feedforward = [t for t in targets if t in TARGET_PRESETS["mlp"]]
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=task_type)
    if cfg.type == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM")
    if cfg.type == "prompt":
        # initialised from real token embeddings: random vectors far from the vocabulary train slowly
        return peft.PromptTuningConfig(
            num_virtual_tokens=cfg.virtual_tokens,
            task_type="CAUSAL_LM",
            prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB,
        )
    raise ValueError(cfg.type)


def apply_adapter(model, cfg: AdapterConfig, tokenizer=None, task_type: str = "CAUSAL_LM"):
    """Return the model to train. Full fine-tuning trains every weight (or the `freeze` part);
    every adapter type freezes the base and trains only its own parameters. With a tokenizer,
    prefix tuning starts from real text's keys and values (`init_prefix_from_text`)."""
    if cfg.type == "none":
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze is not None:
            train_only(model, cfg.freeze)
        return model
    from peft import get_peft_model

    if cfg.type == "qlora":
        from peft import prepare_model_for_kbit_training

        # norms and other unquantized weights to fp32; gradient checkpointing stays the run's choice
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        peft_model = get_peft_model(model, peft_config(model, cfg, task_type))
    except ValueError as e:
        raise UserError(f"adapter: {cfg.type}: {first_line(e)}") from None
    if tokenizer is not None and cfg.type == "prefix":
        init_prefix_from_text(peft_model, tokenizer, cfg.init_text or PREFIX_INIT_TEXT)
    elif tokenizer is not None and cfg.type == "prompt" and cfg.init_text:
        init_prompt_from_text(peft_model, tokenizer, cfg.init_text)
    return peft_model


PREFIX_INIT_TEXT = "You are a helpful assistant. Answer the user's request accurately and concisely."


def virtual_token_ids(tokenizer, text: str, n: int) -> list[int]:
    """The text's tokens, repeated or cut to `n` virtual tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (ids * (n // max(1, len(ids)) + 1))[:n]


def init_prompt_from_text(model, tokenizer, text: str) -> None:
    """Prompt tuning from a text's token embeddings (Lester et al. found real-token starts train
    better than random ones; the default samples vocabulary tokens): the virtual tokens start as
    that text would read to the model."""
    ids = torch.tensor(virtual_token_ids(tokenizer, text, model.active_peft_config.num_virtual_tokens))
    weight = model.prompt_encoder[model.active_adapter].embedding.weight
    with torch.no_grad():
        weight.copy_(model.get_base_model().get_input_embeddings()(ids.to(weight.device)).to(weight.dtype))


def init_prefix_from_text(model, tokenizer, text: str = PREFIX_INIT_TEXT) -> None:
    """Start prefix tuning from the keys and values the model itself computes for real text.

    PEFT initialises the prefix with unit-normal vectors, far from any key or value the model
    produces: before the first step they derail every layer (on the bundled model the first loss is
    ~7x the base model's). Keys and values of a plain instruction sentence are a prefix the model
    already knows how to read, so training starts from the base model's behaviour (as Li & Liang
    found for initialising prefixes with real words' activations)."""
    n = model.active_peft_config.num_virtual_tokens
    ids = virtual_token_ids(tokenizer, text, n)
    base = model.get_base_model()
    weight = model.prompt_encoder[model.active_adapter].embedding.weight
    with torch.no_grad():
        out = base(input_ids=torch.tensor([ids], device=weight.device), use_cache=True)
        cache = out.cache if "cache" in out else out.past_key_values  # transformers 5.x renamed it
        # PEFT's layout of one virtual token: [layer][key, value][kv head][head dim], flattened
        kv = torch.stack([t for layer in cache.layers for t in (layer.keys[0], layer.values[0])])  # [2L, H, n, D]
        if kv.shape[0] * kv.shape[1] * kv.shape[3] != weight.shape[1]:
            return  # an architecture whose cache does not match PEFT's prefix layout: keep PEFT's init
        weight.copy_(kv.permute(2, 0, 1, 3).reshape(n, -1).to(weight.dtype))


def can_merge(model) -> bool:
    """Adapters whose weights fold into the base (LoRA, DoRA, IA3); virtual tokens do not."""
    return hasattr(model, "peft_config") and not is_prompt_learning(model)


def decoder_layer_indices(model) -> set[int]:
    return {int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER_INDEX.search(name))}


def train_only(model, freeze: FreezeConfig) -> int:
    """Partial full fine-tuning: only the top N decoder layers and the final norm, or only the
    parameters whose names contain one of `modules`. Returns the parameters left trainable."""
    if freeze.top_layers is not None:
        layers = decoder_layer_indices(model)
        if freeze.top_layers > len(layers):
            raise UserError(
                f"adapter.freeze.top_layers: {freeze.top_layers}, but the model has {len(layers)} decoder layers"
            )
        first = len(layers) - freeze.top_layers
        final_norm = {
            id(p)
            for name, p in model.named_parameters()
            if re.search(r"(^|\.)(norm|ln_f|final_layernorm)\.", name) and not _LAYER_INDEX.search(name)
        }

        def keep(name, p):
            m = _LAYER_INDEX.search(name)
            return (m is not None and int(m.group(1)) >= first) or id(p) in final_norm
    else:

        def keep(name, p):
            return any(part in name for part in freeze.modules or [])

    trained = 0
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name, p))
        trained += p.numel() if p.requires_grad else 0
    if not trained:
        raise UserError(f"adapter.freeze.modules: {freeze.modules} matches no parameter of this model")
    return trained


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def freeze_lower_layers(model, n: int) -> int:
    """Stop training the lowest `n` decoder layers (and the input embeddings, which sit below
    them; with tied embeddings that freezes the output head too). Returns parameters frozen."""
    if n <= 0:
        return 0
    layers = decoder_layer_indices(model)
    if n > len(layers):
        raise UserError(f"forgetting.freeze_layers: {n}, but the model has {len(layers)} decoder layers")
    frozen = 0
    embeddings = {id(p) for p in unwrap(model).get_input_embeddings().parameters()}
    for name, p in model.named_parameters():
        m = _LAYER_INDEX.search(name)
        if p.requires_grad and ((m and int(m.group(1)) < n) or id(p) in embeddings):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def save_adapter_folder(model, weights: dict[str, torch.Tensor], folder) -> bool:
    """Write `weights` (the model's trainable tensors, whole) as the adapter folder PEFT loads
    (`adapter_config.json` + `adapter_model.safetensors`): what makes a checkpoint servable as it is.
    False, writing nothing, for a model without an adapter."""
    import json
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not hasattr(model, "peft_config"):
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = getattr(model, "active_adapter", "default")
    state = get_peft_model_state_dict(model, state_dict=weights, adapter_name=name)
    with atomic.replacing(folder / "adapter_model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)
    config = model.peft_config[name].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    atomic.write_text(folder / "adapter_config.json", json.dumps(config, indent=2, default=str))
    return True
