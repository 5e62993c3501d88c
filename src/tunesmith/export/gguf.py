"""A Llama, Mistral, Qwen 2, Qwen 3 or Gemma 3 model as one GGUF file (f16 or q8_0), for
llama.cpp, Ollama, LM Studio and transformers' own GGUF loader.

Written with the `gguf` package the way llama.cpp's converter writes it: its architecture and
tensor names (`gguf.get_tensor_name_map`: Qwen's q/k/v biases, Qwen 3's and Gemma 3's q/k norms
included); for llama.cpp's llama architecture (Llama, Mistral) its row order for the query and key
projections (rotary halves interleaved: llama.cpp permutes them, and every GGUF reader undoes it;
Qwen and Gemma rotate NEOX-style, unpermuted); Gemma's norms stored as llama.cpp multiplies by them
(1 + weight); norms kept in f32, a tied output head left out, and the tokenizer in the file
(`gguf_vocab`) so the file alone is a complete model.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import UserError
from tunesmith.export import GGUF_QUANTS
from tunesmith.export.gguf_vocab import pre_tokenizer_name, vocabulary, write_vocabulary

# model_type -> gguf.MODEL_ARCH member
ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3", "gemma3_text": "GEMMA3"}
ROTARY_PERMUTED = ("LLAMA",)  # llama.cpp's converter permutes q/k rows for its llama architecture only
NORM_PLUS_ONE = ("GEMMA3",)  # Gemma's RMSNorm scales by (1 + weight); llama.cpp by the stored weight
GEMMA3_SWA_PATTERN = 6  # llama.cpp's Gemma 3: every sixth layer global unless the file lists the layers


def permute_rotary_rows(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's order for q/k rows: within each head, the two rotary halves interleaved."""
    heads = n_head_kv if n_head_kv != n_head else n_head
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(params: dict, fallback: float) -> float:
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind != "default":
        raise UserError(f"GGUF export: rope scaling '{kind}' is not supported (plain rotary embeddings only)")
    return float(params.get("rope_theta") or fallback)


def rope_thetas(config) -> dict[str, float]:
    """Rotary base per layer kind ({"full_attention": θ} or with "sliding_attention" too)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    fallback = float(getattr(config, "rope_theta", None) or 10000.0)
    if all(isinstance(v, dict) for v in params.values()) and params:
        return {kind: _rope_theta(p, fallback) for kind, p in params.items()}
    return {"full_attention": _rope_theta(params, fallback)}


def head_width(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_supported(config, arch: str) -> None:
    """Refuse, in one line, what llama.cpp would read as a different model."""
    kind = config.model_type
    if arch != "GEMMA3" and (
        getattr(config, "use_sliding_window", False) or (kind == "mistral" and config.sliding_window)
    ):
        raise UserError(f"GGUF export: this {kind} model uses a sliding window, which llama.cpp's {arch.lower()} drops")
    head_dim = head_width(config)
    if arch == "LLAMA" and head_dim * config.num_attention_heads != config.hidden_size:
        raise UserError("GGUF export: head_dim * heads must equal the hidden size for llama.cpp's Llama")
    if arch == "GEMMA3":
        expected = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == 62 else head_dim
        if config.query_pre_attn_scalar != expected:
            raise UserError(
                f"GGUF export: query_pre_attn_scalar {config.query_pre_attn_scalar} differs from the "
                f"{expected} llama.cpp's Gemma 3 scales queries by"
            )
        if getattr(config, "attn_logit_softcapping", None):
            raise UserError("GGUF export: llama.cpp's Gemma 3 has no attention soft-cap; this model sets one")
        if config.hidden_activation != "gelu_pytorch_tanh":
            raise UserError(
                f"GGUF export: llama.cpp's Gemma 3 uses tanh-approximate GELU, not {config.hidden_activation}"
            )


def write_gemma3_keys(writer, config, thetas: dict[str, float]) -> None:
    """Gemma 3's sliding window: its width, which layers use it (as a list, so any pattern is
    read as written) and their rotary base."""
    writer.add_sliding_window(int(config.sliding_window))
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
    writer.add_rope_freq_base_swa(thetas.get("sliding_attention", thetas["full_attention"]))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def write_gguf(
    model, tokenizer, path: Path, quant: str = "f16", name: str = "model", source: Path | None = None
) -> dict:
    """Write `model` (a plain causal LM of a family in ARCHITECTURES, any adapter merged) to
    `path`; `source`: its Hugging Face folder, for what the conversion from a GGUF file recorded."""
    import gguf

    if quant not in GGUF_QUANTS:
        raise UserError(f"--quant {quant}: choose one of {', '.join(GGUF_QUANTS)}")
    config = model.config
    kind = config.model_type
    if kind not in ARCHITECTURES:
        raise UserError(f"GGUF export writes {', '.join(ARCHITECTURES)} models; this one is '{kind}'")
    arch_name = ARCHITECTURES[kind]
    check_supported(config, arch_name)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = head_width(config)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    vocab = vocabulary(tokenizer, n_vocab)
    thetas = rope_thetas(config)

    arch = getattr(gguf.MODEL_ARCH, arch_name)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(thetas["full_attention"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if arch_name == "GEMMA3":
        write_gemma3_keys(writer, config, thetas)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    write_vocabulary(writer, tokenizer, vocab, pre_tokenizer_name(tokenizer, source))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: Counter[str] = Counter()
    for hf_name, tensor in model.state_dict().items():
        if (hf_name == "lm_head.weight" and tied) or "rotary_emb" in hf_name:
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"GGUF export: no llama.cpp tensor name for '{hf_name}'")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch_name in ROTARY_PERMUTED and hf_name.endswith("q_proj.weight"):
            data = permute_rotary_rows(data, n_head, n_head)
        elif arch_name in ROTARY_PERMUTED and hf_name.endswith("k_proj.weight"):
            data = permute_rotary_rows(data, n_head, n_kv)
        elif arch_name in NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
            data = data + 1.0
        if data.ndim == 1:
            writer.add_tensor(target, np.ascontiguousarray(data))
            counts["f32"] += 1
        elif quant == "q8_0" and data.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            counts["q8_0"] += 1
        else:
            writer.add_tensor(target, np.ascontiguousarray(data.astype(np.float16)))
            counts["f16"] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": dict(counts), "bytes": path.stat().st_size, "vocab": n_vocab}
