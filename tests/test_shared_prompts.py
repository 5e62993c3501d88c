"""Sequences packed after the prompt they share (GRPO's groups, DPO's pairs): every family's
log-probabilities and gradients are those of each sequence in a row of its own, with the prompt
computed once."""

import pytest
import torch
from test_families import FAMILIES, WINDOW, build

from tunesmith.data.chat import IGNORE
from tunesmith.data.collate import collate_tokens
from tunesmith.methods.logprobs import sequence_logprobs, token_logprobs
from tunesmith.methods.preference import shared_pairs
from tunesmith.methods.rollout import shared_prompt_rows
from tunesmith.model.segment_attention import use_segment_attention


def groups(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts repeated as groups sample them (3, 1 and 2 replies; one prompt past the sliding
    window, one of a single token) and a reply of 1-9 tokens to each."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for length, copies in ((WINDOW + 5, 3), (1, 1), (4, 2)):
        prompt = torch.randint(3, 96, (length,), generator=g).tolist()
        prompts += [prompt] * copies
    replies = [torch.randint(3, 96, (int(n),), generator=g).tolist() for n in torch.randint(1, 10, (len(prompts),))]
    return prompts, replies


def model_and_batches(family: str):
    """A family's tiny model under segment attention, and the groups as a row per reply and as a
    row per group."""
    torch.manual_seed(0)
    model = build(family)
    use_segment_attention(model)
    prompts, replies = groups()
    sequences = [(p + r, [IGNORE] * len(p) + r) for p, r in zip(prompts, replies)]
    alone = collate_tokens([{"input_ids": ids, "labels": labels} for ids, labels in sequences], 0)
    return model, alone, collate_tokens(shared_prompt_rows(prompts, sequences), 0), replies


def logprobs_and_gradients(model, batch):
    model.zero_grad()
    logps, _ = token_logprobs(model, batch)
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(1))
    (logps * weights).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_reply_gets_what_its_own_row_gives_with_the_prompt_computed_once(family):
    model, alone, shared, replies = model_and_batches(family)
    assert shared["input_ids"].shape[0] == 3 and shared["n_tokens"] < alone["n_tokens"]
    logps, grads = logprobs_and_gradients(model, alone)
    shared_logps, shared_grads = logprobs_and_gradients(model, shared)
    assert shared_logps.shape == logps.shape == (sum(map(len, replies)),)
    assert torch.allclose(shared_logps, logps, atol=1e-5)
    assert grads.keys() == shared_grads.keys()
    for name, grad in grads.items():  # fp32 sums in another order: within 1e-5 of the gradient's scale
        assert (shared_grads[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_under_bf16_autocast_each_reply_gets_its_own_row_s_values_within_bf16_rounding(family):
    """The bf16 path (matmul attention; Gemma 3's windowed layers: the exact one): log-probs within
    0.05 and gradients within 3% of their scale of the rows of their own (bf16 against fp32 moves
    them by up to 0.14 and 8% here; a reply that missed its prompt, by over 4 and 100%)."""
    model, alone, shared, replies = model_and_batches(family)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, grads = logprobs_and_gradients(model, alone)
        shared_logps, shared_grads = logprobs_and_gradients(model, shared)
    assert (shared_logps - logps).abs().max() <= 0.05
    for name, grad in grads.items():
        assert (shared_grads[name] - grad).abs().max() <= 0.03 * grad.abs().max(), name


def pair_features(seed: int = 0) -> list[dict]:
    """Preference pairs as `PairedPreference.features` makes them: a prompt (one past the sliding
    window, one of a single token), then a chosen and a rejected response, the loss on each
    response; one pair's responses begin with the same two tokens (trained, so not shared)."""
    g = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, 96, (n,), generator=g).tolist()

    out = []
    for prompt_length, same_start in ((WINDOW + 5, False), (1, False), (4, True)):
        prompt = tokens(prompt_length)
        chosen, rejected = tokens(int(torch.randint(2, 9, (1,), generator=g))), tokens(5)
        if same_start:
            rejected[:2] = chosen[:2]
        out.append(
            {
                side: {"input_ids": prompt + reply, "labels": [IGNORE] * len(prompt) + reply}
                for side, reply in (("chosen", chosen), ("rejected", rejected))
            }
        )
    return out


def sequence_sums_and_gradients(model, batch):
    model.zero_grad()
    sums, counts = sequence_logprobs(model, batch)
    weights = torch.randn(sums.shape, generator=torch.Generator().manual_seed(1))
    (sums * weights).sum().backward()
    return sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_preference_pair_packed_after_its_prompt_scores_each_response_as_its_own_row(family):
    torch.manual_seed(0)
    model = build(family)
    use_segment_attention(model)
    features = pair_features()
    rows = [f["chosen"] for f in features] + [f["rejected"] for f in features]
    alone = collate_tokens(rows, 0)
    shared = shared_pairs(features, 0)
    assert shared is not None and shared["input_ids"].shape[0] == len(features)
    assert shared["input_ids"].ne(0).sum() < alone["input_ids"].ne(0).sum()
    sums, counts, grads = sequence_sums_and_gradients(model, alone)
    shared_sums, shared_counts, shared_grads = sequence_sums_and_gradients(model, shared)
    assert torch.equal(shared_counts, counts)  # chosen responses first, then the rejected, as the loss reads them
    assert torch.allclose(shared_sums, sums, atol=1e-5)
    for name, grad in grads.items():
        assert (shared_grads[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name


def test_a_model_without_segment_attention_refuses_a_shared_prompt_batch():
    model = build("llama")
    prompts, replies = groups()
    sequences = [(p + r, [IGNORE] * len(p) + r) for p, r in zip(prompts, replies)]
    with pytest.raises(ValueError, match="needs segment attention"):
        token_logprobs(model, collate_tokens(shared_prompt_rows(prompts, sequences), 0))
