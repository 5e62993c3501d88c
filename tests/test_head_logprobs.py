"""Chunked head log-probabilities equal plain log-softmax, in value and in every gradient."""

import pytest
import torch

from tunesmith.methods.head_logprobs import head_logprobs


def _plain(hidden, weight, targets):
    logp = torch.log_softmax(hidden @ weight.T, -1)
    return logp.gather(1, targets[:, None])[:, 0], logp.argmax(-1) == targets


@pytest.mark.parametrize("head_trains", [False, True])
@pytest.mark.parametrize("chunk", [3, 64])
def test_values_and_gradients_match_plain_log_softmax(head_trains, chunk):
    torch.manual_seed(0)
    n, d, vocab = 10, 16, 50
    hidden0, weight0 = torch.randn(n, d), torch.randn(vocab, d)
    targets = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n)  # a per-token weight, as DPO and GRPO give; SFT's is -1 everywhere
    results = []
    for fn in (_plain, lambda h, w, t: head_logprobs(h, w, t, chunk=chunk)):
        hidden = hidden0.clone().requires_grad_()
        weight = weight0.clone().requires_grad_(head_trains)
        logp, correct = fn(hidden, weight, targets)
        (logp * upstream).sum().backward()
        results.append((logp.detach(), correct, hidden.grad, weight.grad))
    (lp_a, c_a, gh_a, gw_a), (lp_b, c_b, gh_b, gw_b) = results
    assert torch.allclose(lp_a, lp_b, atol=1e-5) and torch.equal(c_a, c_b)
    assert torch.allclose(gh_a, gh_b, atol=1e-5)
    if head_trains:
        assert torch.allclose(gw_a, gw_b, atol=1e-5)
    else:
        assert gw_b is None


def test_bf16_autocast_matches_autocast_logits_closely_and_no_grad_skips_the_gradient_work():
    torch.manual_seed(1)
    hidden, weight = torch.randn(40, 32), torch.randn(300, 32)
    targets = torch.randint(0, 300, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = torch.log_softmax((hidden @ weight.T).float(), -1).gather(1, targets[:, None])[:, 0]
        with torch.no_grad():
            logp, _ = head_logprobs(hidden.requires_grad_(), weight, targets, chunk=7)
    assert logp.dtype == torch.float32 and not logp.requires_grad
    assert torch.allclose(logp, ref, atol=1e-4)
