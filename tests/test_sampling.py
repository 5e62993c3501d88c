"""A sampled row's token choice: drawn from the distribution its settings give (temperature, top-k,
top-p as transformers' warpers), never a token those settings rule out, the same for the same seed."""

import math

import pytest
import torch

import tunesmith.generation.sampling as sampling
from tunesmith.generation.sampling import RowSampler, RowSettings, drawn, warped

LOGITS = torch.tensor([2.0, 0.5, -1.0, 1.5, 0.0, 3.0, -2.0, 1.0])


def test_drawn_tokens_follow_the_warped_distribution_and_never_a_ruled_out_token():
    settings = RowSettings(temperature=0.9, top_k=6, top_p=0.95, seed=3)
    expected = torch.softmax(warped(LOGITS, 0.9, 6, 0.95), dim=-1)
    assert (expected == 0).sum() == 3  # top-k and top-p rule out three of the eight
    sampler, n = RowSampler(settings), 20_000
    counts = torch.bincount(torch.tensor([sampler.choose(LOGITS).token for _ in range(n)]), minlength=8)
    for token, p in enumerate(expected.tolist()):
        if p == 0:
            assert counts[token] == 0, f"token {token} has probability 0 and was drawn {int(counts[token])} times"
        else:
            sigma = math.sqrt(p * (1 - p) / n)
            assert abs(counts[token] / n - p) < 5 * sigma, (token, float(counts[token] / n), p)


def test_the_same_seed_draws_the_same_tokens_and_another_seed_others():
    def tokens(seed):
        sampler = RowSampler(RowSettings(temperature=1.0, seed=seed))
        return [sampler.choose(LOGITS).token for _ in range(64)]

    assert tokens(5) == tokens(5) and tokens(5) != tokens(6)


def test_a_uniform_that_rounds_up_to_the_total_takes_the_last_possible_token(monkeypatch):
    monkeypatch.setattr(sampling.torch, "rand", lambda *a, **k: torch.tensor(1.0, dtype=torch.float64))
    assert drawn(torch.tensor([0.25, 0.0, 0.75, 0.0, 0.0]), None) == 2


def test_a_distribution_that_is_not_one_raises_instead_of_drawing(monkeypatch):
    for probs in (torch.full((4,), float("nan")), torch.zeros(4)):
        with pytest.raises(ValueError, match="no token can be drawn"):
            drawn(probs, None)
