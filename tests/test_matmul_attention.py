"""Matmul attention computes causal grouped-query attention: exactly (fp32) and within bf16's
rounding (bf16, no worse than SDPA's own bf16 kernel), values and gradients, across chunk edges."""

import pytest
import torch
import torch.nn.functional as F
from helpers import saved_storages

from tunesmith.model import matmul_attention
from tunesmith.model.matmul_attention import CHUNK, causal_attention, low_precision

HEADS, KV_HEADS, DIM = 6, 2, 16


def _inputs(length, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(h, length, DIM, generator=g) * s for h, s in ((HEADS, 2.0), (KV_HEADS, 2.0), (KV_HEADS, 1.0))
    )
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=DIM**-0.5, enable_gqa=True)[
        0
    ]


def _run(fn, q, k, v, grad):
    out = fn(q, k, v)
    out.backward(grad)
    return [out.detach().float()] + [t.grad.float() for t in (q, k, v)]


@pytest.mark.parametrize("length", [1, 37, CHUNK, CHUNK + 45, 2 * CHUNK + 3])
def test_fp32_equals_sdpa(length):
    grad = torch.randn(HEADS, length, DIM, generator=torch.Generator().manual_seed(1))
    mine = _run(lambda q, k, v: causal_attention(q, k, v, DIM**-0.5), *_inputs(length, torch.float32), grad)
    ref = _run(_sdpa, *_inputs(length, torch.float32), grad)
    for a, b in zip(mine, ref):
        assert torch.allclose(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("prefix, length", [(1, 1), (40, 37), (30, CHUNK + 45)])
def test_queries_after_a_shared_prefix_see_all_of_it_and_themselves_causally(prefix, length):
    """Queries that are the last `length` of the keys (a reply after a prompt other replies share):
    SDPA with that mask, values and gradients, fp32."""
    grad = torch.randn(HEADS, length, DIM, generator=torch.Generator().manual_seed(1))
    allowed = torch.arange(prefix + length)[None, :] <= prefix + torch.arange(length)[:, None]

    def masked_sdpa(q, k, v):
        return F.scaled_dot_product_attention(
            q[None], k[None], v[None], attn_mask=allowed, scale=DIM**-0.5, enable_gqa=True
        )[0]

    def inputs():
        q = _inputs(length, torch.float32)[0]
        k, v = _inputs(prefix + length, torch.float32, seed=2)[1:]
        return q, k, v

    mine = _run(lambda q, k, v: causal_attention(q, k, v, DIM**-0.5), *inputs(), grad)
    ref = _run(masked_sdpa, *inputs(), grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), mine, ref):
        assert torch.allclose(a, b, atol=2e-5, rtol=1e-4), name


@pytest.mark.parametrize("length", [37, CHUNK + 45])
def test_bf16_is_as_close_to_fp32_as_sdpa_in_bf16(length):
    grad = torch.randn(HEADS, length, DIM, generator=torch.Generator().manual_seed(1))
    exact = _run(_sdpa, *_inputs(length, torch.float32), grad)
    mine = _run(lambda q, k, v: causal_attention(q, k, v, DIM**-0.5), *_inputs(length, torch.bfloat16), grad.bfloat16())
    sdpa = _run(_sdpa, *_inputs(length, torch.bfloat16), grad.bfloat16())
    for name, e, m, s in zip(("out", "dq", "dk", "dv"), exact, mine, sdpa):
        scale = e.abs().max()
        mine_err, sdpa_err = (m - e).abs().mean() / scale, (s - e).abs().mean() / scale
        assert mine_err < 1e-2, name
        assert mine_err < 2 * sdpa_err + 1e-3, (name, mine_err.item(), sdpa_err.item())


def test_low_precision_only_on_cpu_in_bf16_or_under_autocast():
    x = torch.zeros(2, 3)
    assert low_precision(x) is None
    assert low_precision(x.bfloat16()) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert low_precision(x) == torch.bfloat16  # RoPE leaves queries in fp32 under autocast


def test_cached_mask_grows_and_slices_stay_causal():
    matmul_attention._causal_bias.clear()
    small = matmul_attention._bias(10, torch.float32)
    big = matmul_attention._bias(small.shape[0] + 5, torch.float32)
    assert big.shape[0] == small.shape[0] + 5
    block = big[3:7, :7]
    assert torch.equal(torch.isinf(block), torch.ones(7, 7, dtype=torch.bool).triu(1)[3:7])


def _saved_run(q, k, v, grad):
    """Outputs and gradients of bf16 matmul attention, and the bytes kept for its backward pass."""
    with saved_storages() as storages:
        out = causal_attention(q, k, v, DIM**-0.5)
    out.backward(grad)
    storages.pop(matmul_attention._causal_bias[torch.bfloat16].untyped_storage().data_ptr(), None)  # held anyway
    return [out.detach(), q.grad, k.grad, v.grad], sum(storages.values())


def test_training_recomputes_the_probabilities_bit_for_bit_instead_of_keeping_them(monkeypatch):
    length = 2 * CHUNK + 3
    grad = torch.randn(HEADS, length, DIM, generator=torch.Generator().manual_seed(1)).bfloat16()
    lean, lean_saved = _saved_run(*_inputs(length, torch.bfloat16), grad)

    def kept(q, keys, values, bias):  # plain autograd: the probabilities are kept
        probs = matmul_attention._probabilities(q, keys, bias)
        return torch.bmm(probs.view(q.shape[0], q.shape[1], -1), values)

    monkeypatch.setattr(matmul_attention._ChunkAttention, "apply", kept)
    plain, plain_saved = _saved_run(*_inputs(length, torch.bfloat16), grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), lean, plain):
        assert torch.equal(a, b), name
    ends = [min(length, s + CHUNK) for s in range(0, length, CHUNK)]
    probabilities = sum(HEADS * (end - start) * end for start, end in zip([0] + ends[:-1], ends)) * 2  # bf16
    assert plain_saved - lean_saved == probabilities
