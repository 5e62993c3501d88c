"""Load a resolved model reference into (model, tokenizer), ready to train or to generate."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from tunesmith.data.chat import DEFAULT_CHAT_TEMPLATE
from tunesmith.errors import UserError
from tunesmith.model.resolve import Resolved, resolve
from tunesmith.runtime.memory import own_mapped_tensors


def tokenizer_dir(resolved: Resolved) -> Path:
    """A run's adapter folder carries the tokenizer it was trained with; otherwise the base's."""
    if resolved.adapter is not None and (resolved.adapter / "tokenizer_config.json").is_file():
        return resolved.adapter
    return resolved.path


_REMOTE_CODE = {"trusted": False}


@contextmanager
def remote_code_trusted(trusted: bool):
    """While inside, loading runs a model folder's own Python code (`trust_remote_code`); only a
    config that says `trust_remote_code: true` enters with True."""
    previous = _REMOTE_CODE["trusted"]
    _REMOTE_CODE["trusted"] = trusted
    try:
        yield
    finally:
        _REMOTE_CODE["trusted"] = previous


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=_REMOTE_CODE["trusted"])
    except Exception as e:
        raise UserError(f"{path}: could not load tokenizer ({str(e).splitlines()[0][:200]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:  # a base model: the documented default, saved with every model trained or exported
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


@contextmanager
def quiet_transformers():
    """No progress bars or info logging from transformers while loading or saving weights."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def load_base(path: Path, dtype: torch.dtype = torch.float32, quantization: dict | None = None, head: str = "causal"):
    """Full weights from an HF folder, quietly (no progress bars), in `dtype`; or quantized with
    bitsandbytes (`model/quantize.py` settings) onto this machine's device. `head`: `causal` (a
    language model) or `score` (one scalar per sequence: a reward model; a language model's folder
    gets a new, untrained head)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    extra = {}
    if quantization is not None:
        from tunesmith.model.quantize import bnb_config
        from tunesmith.runtime.precision import device

        extra = {"quantization_config": bnb_config(quantization), "device_map": {"": str(device())}}
    # safetensors only: a pickled checkpoint (.bin, .pt) runs code when loaded (`resolve` refuses those folders)
    extra.update(use_safetensors=True, trust_remote_code=_REMOTE_CODE["trusted"])
    try:
        with quiet_transformers():
            if head == "score":
                model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, num_labels=1, **extra)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: could not load model ({str(e).splitlines()[0][:200]})") from None
    if quantization is not None:  # the weights that stayed unquantized (embeddings, norms) out of the mapped file
        own_mapped_tensors(model)
    return model


def load_for_inference(reference: str | Resolved, dtype: torch.dtype = torch.float32, merge: bool = True):
    """Model + tokenizer for generation. A run's adapter is merged for speed unless merge=False
    or it cannot merge (prefix and prompt tuning keep their virtual tokens). A QLoRA adapter goes
    onto its base quantized as in training, or, to merge, onto that base dequantized."""
    resolved = reference if isinstance(reference, Resolved) else resolve(reference)
    tokenizer = load_tokenizer(tokenizer_dir(resolved))
    quantization = None
    if resolved.adapter is not None:
        from tunesmith.model.quantize import read_settings

        quantization = read_settings(resolved.adapter)
    if quantization is not None:
        model = load_base(resolved.path, torch.float32, quantization)
        if merge:
            model = model.dequantize().to(dtype)
    else:
        model = load_base(resolved.path, dtype)
    if resolved.adapter is not None:
        from peft import PeftModel

        from tunesmith.model.adapters import can_merge

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge and can_merge(model):
            model = model.merge_and_unload()
    from tunesmith.model.quantize import is_quantized
    from tunesmith.runtime.precision import device

    if not is_quantized(model):
        model.to(device())
    return model.eval(), tokenizer


def is_reward_checkpoint(resolved: Resolved) -> bool:
    """Whether the reference holds a trained scalar head: a reward run's adapter (its head saved
    with it) or a folder saved as a sequence-classification model with one label."""
    import json

    if resolved.adapter is not None:
        cfg = json.loads((resolved.adapter / "adapter_config.json").read_text())
        return cfg.get("task_type") == "SEQ_CLS"
    cfg = json.loads((resolved.path / "config.json").read_text())
    return (
        any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])
        and cfg.get("num_labels", len(cfg.get("id2label") or {0: 0})) == 1
    )


def load_reward_model(reference: str | Resolved, dtype: torch.dtype = torch.float32):
    """A trained reward model (a `method: reward` run or its export) and its tokenizer, ready to
    score. A plain language model is refused: its head would be untrained noise."""
    resolved = reference if isinstance(reference, Resolved) else resolve(reference)
    if not is_reward_checkpoint(resolved):
        raise UserError(
            f"{resolved.reference or resolved.path}: not a reward model (no trained score head); "
            "train one with method: reward"
        )
    tokenizer = load_tokenizer(tokenizer_dir(resolved))
    quantization = None
    if resolved.adapter is not None:
        from tunesmith.model.quantize import read_settings

        quantization = read_settings(resolved.adapter)
    model = load_base(resolved.path, torch.float32 if quantization else dtype, quantization, head="score")
    if quantization is not None:  # trained over a quantized base: merge onto it dequantized
        model = model.dequantize().to(dtype)
    if resolved.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter).merge_and_unload()
    from tunesmith.runtime.precision import device

    return model.to(device()).eval(), tokenizer
