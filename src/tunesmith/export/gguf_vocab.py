"""A Hugging Face tokenizer as GGUF tokenizer metadata, so the file alone is a complete model.

Two kinds, as llama.cpp's converter writes them:
- byte-level BPE (GPT-2 style: SmolLM, Llama 3, Qwen): `tokenizer.ggml.model = gpt2`, the
  vocabulary and the merges;
- SentencePiece-style BPE (Gemma, Llama 2, Mistral: spaces as '▁', unknown characters as byte
  tokens): `tokenizer.ggml.model = llama`, the vocabulary with a score per token. llama.cpp merges
  the adjacent pair whose joined piece scores highest, where a Hugging Face tokenizer applies its
  merge list in order; a piece's score is minus the rank of the first merge that makes it, so both
  choose the same pair.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError

# transformers' pre-tokenizer, as llama.cpp names the splitting rule it stands for
PRE_TOKENIZERS = {("Digits", "ByteLevel"): "smollm", ("ByteLevel",): "gpt-2"}
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6  # llama.cpp's token types
ADDED_SCORE = -1000.0  # the score llama.cpp's converter gives special and user-defined pieces


@dataclass
class Vocabulary:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokens: list[str]
    types: list[int]
    merges: list[str] | None = None  # byte-level BPE
    scores: list[float] | None = None  # SentencePiece-style
    add_space_prefix: bool = False


def _spec(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _pre_tokenizer_steps(spec: dict) -> tuple[str, ...]:
    """The types of a tokenizer.json's pre-tokenizer pipeline, e.g. ("Digits", "ByteLevel")."""
    pre = spec.get("pre_tokenizer") or {}
    return (
        tuple(p["type"] for p in pre.get("pretokenizers", []))
        if pre.get("type") == "Sequence"
        else (str(pre.get("type")),)
    )


def _normalizer_steps(spec: dict) -> list[dict]:
    norm = spec.get("normalizer") or {}
    return norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]


def is_sentencepiece_style(spec: dict) -> bool:
    """BPE over '▁'-for-space pieces with byte fallback: what a SentencePiece BPE model becomes in
    tokenizer.json (the normalizer turns ' ' into '▁'; no byte-level pre-tokenizer)."""
    replaces_space = any(
        step.get("type") == "Replace" and step.get("content") == "▁" for step in _normalizer_steps(spec)
    )
    return spec.get("model", {}).get("type") == "BPE" and bool(spec["model"].get("byte_fallback")) and replaces_space


def pre_tokenizer_name(tokenizer, source: Path | None) -> str:
    """`tokenizer.ggml.pre`: the name the source GGUF gave (recorded when it was converted), else
    read off the tokenizer's pre-tokenizer pipeline."""
    from tunesmith.model.resolve import SOURCE_NOTE

    if source is not None and (source / SOURCE_NOTE).is_file():
        pre = json.loads((source / SOURCE_NOTE).read_text()).get("tokenizer.ggml.pre")
        if pre:
            return pre
    return PRE_TOKENIZERS.get(_pre_tokenizer_steps(_spec(tokenizer)), "default")


def vocabulary(tokenizer, n_vocab: int) -> Vocabulary:
    """The tokenizer's pieces by id (ids past its vocabulary, up to the embedding's rows, as
    unused padding) with their GGUF types, and the merges or scores its kind needs."""
    spec = _spec(tokenizer)
    model = spec.get("model") or {}
    byte_level = model.get("type") == "BPE" and "ByteLevel" in _pre_tokenizer_steps(spec)
    if not byte_level and not is_sentencepiece_style(spec):
        raise UserError(
            "GGUF export supports byte-level BPE (GPT-2 style) and SentencePiece-style BPE tokenizers; "
            f"this tokenizer is {model.get('type')} without either's pre-tokenizer or byte fallback"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a.content: a for a in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(CONTROL if added[token].special else USER_DEFINED)
        else:
            tokens.append(token)
            types.append(BYTE if not byte_level and BYTE_PIECE.fullmatch(token) else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if byte_level:
        return Vocabulary("gpt2", tokens, types, merges=merges)
    return Vocabulary(
        "llama",
        tokens,
        types,
        scores=merge_scores(tokens, types, merges),
        add_space_prefix=any(step.get("type") == "Prepend" for step in _normalizer_steps(spec)),
    )


def merge_scores(tokens: list[str], types: list[int], merges: list[str]) -> list[float]:
    """A score per piece that orders merges as the merge list does: minus the rank of the first
    merge producing the piece; pieces no merge produces (single characters, bytes) score 0."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        rank.setdefault(left + right, i)
    scores = []
    for token, kind in zip(tokens, types):
        if kind in (CONTROL, USER_DEFINED, UNUSED):
            scores.append(ADDED_SCORE)
        else:
            scores.append(-float(rank[token]) if token in rank else 0.0)
    return scores


def adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding text puts BOS in front and EOS at the end, as the tokenizer does it."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bos is not None and ids[:1] == [bos], eos is not None and len(ids) > 1 and ids[-1:] == [eos]


def write_vocabulary(writer, tokenizer, vocab: Vocabulary, pre: str) -> None:
    """The tokenizer keys of a GGUF file: pieces, merges or scores, special ids, BOS/EOS handling
    and the chat template."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(int(token_id))
    add_bos, add_eos = adds_special(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
