"""A Llama, Qwen 2 or Qwen 3 model as one GGUF file (f16 or q8_0), for llama.cpp, Ollama, LM
Studio and transformers' own GGUF loader.

Written with the `gguf` package the way llama.cpp's converter writes it: its architecture and
tensor names (`gguf.get_tensor_name_map`: Qwen's q/k/v biases and Qwen 3's q/k norms included),
for Llama its row order for the query and key projections (rotary halves interleaved: llama.cpp
permutes them, and every GGUF reader undoes it; Qwen rotates NEOX-style, unpermuted), norms kept
in f32, the tied output head left out, and the tokenizer in the file (byte-level BPE vocabulary,
merges, special tokens, chat template) so the file alone is a complete model.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import UserError
from tunesmith.export import GGUF_QUANTS

ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}  # model_type -> gguf.MODEL_ARCH member
ROTARY_PERMUTED = ("llama",)  # llama.cpp's converter permutes q/k rows for its llama architecture only
# transformers' pre-tokenizer, as llama.cpp names the splitting rule it stands for
PRE_TOKENIZERS = {("Digits", "ByteLevel"): "smollm", ("ByteLevel",): "gpt-2"}


def permute_rotary_rows(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's order for q/k rows: within each head, the two rotary halves interleaved."""
    heads = n_head_kv if n_head_kv != n_head else n_head
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer_name(tokenizer, source: Path | None) -> str:
    """`tokenizer.ggml.pre`: the name the source GGUF gave (recorded when it was converted), else
    read off the tokenizer's pre-tokenizer pipeline."""
    from tunesmith.model.resolve import SOURCE_NOTE

    if source is not None and (source / SOURCE_NOTE).is_file():
        pre = json.loads((source / SOURCE_NOTE).read_text()).get("tokenizer.ggml.pre")
        if pre:
            return pre
    return PRE_TOKENIZERS.get(_pre_tokenizer_steps(json.loads(tokenizer.backend_tokenizer.to_str())), "default")


def _pre_tokenizer_steps(spec: dict) -> tuple[str, ...]:
    """The types of a tokenizer.json's pre-tokenizer pipeline, e.g. ("Digits", "ByteLevel")."""
    pre = spec.get("pre_tokenizer") or {}
    return tuple(p["type"] for p in pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else (pre.get("type"),)


def vocabulary(tokenizer, n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF types (1 normal, 3 control, 4 user-defined, 5 unused padding) and
    the BPE merges."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in _pre_tokenizer_steps(spec):
        raise UserError("GGUF export supports byte-level BPE tokenizers (GPT-2 style); this tokenizer is "
                        f"{model.get('type')} without a byte-level pre-tokenizer")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a.content: a for a in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(5)
        else:
            tokens.append(token)
            types.append((3 if added[token].special else 4) if token in added else 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UserError(f"GGUF export: rope scaling '{kind}' is not supported (plain rotary embeddings only)")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def write_gguf(model, tokenizer, path: Path, quant: str = "f16", name: str = "model", source: Path | None = None) -> dict:
    """Write `model` (a plain Llama, Qwen 2 or Qwen 3 causal LM, any adapter merged) to `path`;
    `source`: its Hugging Face folder, for what the conversion from a GGUF file recorded."""
    import gguf

    if quant not in GGUF_QUANTS:
        raise UserError(f"--quant {quant}: choose one of {', '.join(GGUF_QUANTS)}")
    config = model.config
    kind = config.model_type
    if kind not in ARCHITECTURES:
        raise UserError(f"GGUF export writes {', '.join(ARCHITECTURES)} models; this one is '{kind}'")
    if getattr(config, "use_sliding_window", False):
        raise UserError(f"GGUF export: this {kind} model uses a sliding window, which the GGUF readers would drop")
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    if kind == "llama" and head_dim * n_head != config.hidden_size:
        raise UserError("GGUF export: head_dim * heads must equal the hidden size for llama.cpp's Llama")
    n_vocab = model.get_input_embeddings().weight.shape[0]
    tokens, types, merges = vocabulary(tokenizer, n_vocab)

    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[kind])
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer, source))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts = Counter()
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        if "rotary_emb" in hf_name:
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"GGUF export: no llama.cpp tensor name for '{hf_name}'")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if kind in ROTARY_PERMUTED and hf_name.endswith("q_proj.weight"):
            data = permute_rotary_rows(data, n_head, n_head)
        elif kind in ROTARY_PERMUTED and hf_name.endswith("k_proj.weight"):
            data = permute_rotary_rows(data, n_head, n_kv)
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
