"""Segment attention computes what the masked model computes, for padded and for packed batches,
and leaves calls without segments (generation) to plain SDPA."""

import pytest
import torch

from tunesmith.data.collate import collate_tokens
from tunesmith.data.packing import pack_features
from tunesmith.methods.logprobs import token_logprobs
from tunesmith.model.load import load_base
from tunesmith.model.peft_wrapping import unwrap
from tunesmith.model.segment_attention import NAME, restore_attention, use_segment_attention


def _features(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, 300, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_logprobs_and_gradients_equal_the_masked_model(tiny_model_dir, packed, monkeypatch):
    import torch.nn.functional as F

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k)
    )
    feats = _features([7, 19, 12, 30, 5])
    rows = [pack_features(feats[:3]), pack_features(feats[3:])] if packed else feats
    batch = collate_tokens(rows, pad=0)
    results = []
    for segments in (False, True):
        torch.manual_seed(0)
        model = load_base(tiny_model_dir)
        previous = use_segment_attention(unwrap(model)) if segments else None
        assert (model.config._attn_implementation == NAME) == segments
        logps, rows_of = token_logprobs(model, batch)
        logps.sum().backward()
        results.append((logps.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
        restore_attention(model, previous)
        assert model.config._attn_implementation == "sdpa"
    (lp_mask, g_mask), (lp_seg, g_seg) = results
    # first pass: one masked call per layer over whole rows; second: one call per sequence per layer
    width = batch["input_ids"].shape[1]
    assert calls == [width] * 2 + [7, 19, 12, 30, 5] * 2
    assert torch.allclose(lp_mask, lp_seg, atol=1e-5)
    assert torch.allclose(g_mask, g_seg, atol=1e-5)


def test_generation_without_segments_is_plain_sdpa(tiny_model_dir):
    model = load_base(tiny_model_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # left padding, as generation pads
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    plain = model.generate(ids, **kwargs)
    use_segment_attention(model)
    assert torch.equal(model.generate(ids, **kwargs), plain)


def test_under_bf16_autocast_spans_go_to_matmul_attention(tiny_model_dir, monkeypatch):
    from tunesmith.model import matmul_attention

    spans = []
    kernel = matmul_attention.causal_attention
    monkeypatch.setattr(
        matmul_attention, "causal_attention", lambda q, *a: spans.append((q.dtype, q.shape[1])) or kernel(q, *a)
    )
    feats = _features([7, 19, 12, 30, 5])
    batch = collate_tokens([pack_features(feats[:3]), pack_features(feats[3:])], pad=0)
    results = []
    for segments in (False, True):
        model = load_base(tiny_model_dir)
        previous = use_segment_attention(unwrap(model)) if segments else None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, _ = token_logprobs(model, batch)
        results.append(logps.detach().float())
        restore_attention(model, previous)
    n_layers = model.config.num_hidden_layers
    assert spans == [(torch.bfloat16, n) for n in [7, 19, 12, 30, 5]] * n_layers
    masked, per_span = results
    assert (masked - per_span).abs().max() < 0.05  # both bf16: scores and outputs rounded to 8 bits
    assert (masked - per_span).abs().mean() < 0.01
