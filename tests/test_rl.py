"""Online RL (GRPO, RLOO): advantages, clipped surrogate, KL estimate and rewards against
hand-computed values; training through the one engine on the tiny model raises the reward."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.methods.group_policy_losses import (
    clipped_surrogate,
    k3_kl,
    leave_one_out_advantages,
    normalised_advantages,
)
from tunesmith.methods.logprobs import token_logprobs
from tunesmith.run import train


def digit_share(prompt: str, completion: str, reference: str | None) -> float:
    """A reward the tiny random model can climb: the share of its reply's characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def test_group_advantages_match_hand_computed_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    grpo = normalised_advantages(rewards, 4)
    std = math.sqrt(1 / 3)  # sample std of [1, 0, 0, 1]
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2
    assert grpo[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]], rel=1e-6)
    assert grpo[4:].tolist() == [0.0] * 4  # a group that agrees teaches nothing
    rloo = leave_one_out_advantages(rewards, 4)
    assert rloo[:4].tolist() == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])  # r_i - mean of the others
    assert rloo[4:].tolist() == [0.0] * 4


def test_clipped_surrogate_and_k3_kl_match_hand_computed_values():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.75, 0.75, 0.25, 0.25]))  # ratios 1.5, 1.5, 0.5, 0.5
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    objective, clipped = clipped_surrogate(new, old, adv, 0.2)
    # min(ρA, clip(ρ)A): 1.2 (clipped), -1.5, 0.5, -0.8 (clipped)
    assert objective.tolist() == pytest.approx([1.2, -1.5, 0.5, -0.8], rel=1e-6)
    assert clipped.tolist() == [True, False, False, True]
    kl = k3_kl(torch.log(torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.5, 0.4])))
    assert kl.tolist() == pytest.approx([0.0, 2 - math.log(2) - 1], rel=1e-6)  # q = log 2: e^q - q - 1


def test_built_in_rewards():
    from tunesmith.config import RewardSpec
    from tunesmith.methods.rl_rewards import reward_function

    def r(spec, completion, reference="2001-02-03"):
        return reward_function(RewardSpec(**spec))[1]("prompt", completion, reference)

    assert r({"function": "exact_match"}, " 2001-02-03 ") == 1.0 and r({"function": "exact_match"}, "2001-02-04") == 0.0
    iso = {"function": "regex", "pattern": r"\d{4}-\d{2}-\d{2}"}
    assert r(iso, "1999-12-31") == 1.0 and r(iso, "It is 1999-12-31") == 0.0  # the whole reply must match
    assert r({"function": "json_valid"}, '{"a": 1}') == 1.0 and r({"function": "json_valid"}, "{a: 1}") == 0.0
    short = {"function": "length_penalty", "target_length": 10}
    assert r(short, "x" * 10) == 0.0 and r(short, "x" * 25) == pytest.approx(-1.5)
    assert r({"function": "test_rl:digit_share"}, "a1b2") == 0.5  # module:function from the working directory


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"function": "regex"}, "function regex needs pattern"),
        ({"function": "regex", "pattern": "("}, "pattern '\\(':"),
        ({"function": "exact_match", "model": "x"}, "set exactly one of function, model"),
    ],
)
def test_reward_spec_errors(tmp_path, tiny_model_dir, date_data, spec, message):
    from tunesmith.errors import UserError

    cfg = write_config(
        tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", method="grpo", rl={"rewards": [spec]}
    )
    with pytest.raises(UserError, match=message):
        load_config(cfg)


def test_grpo_needs_a_reward(tmp_path, tiny_model_dir, date_data):
    from tunesmith.errors import UserError

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", method="grpo")
    with pytest.raises(UserError, match="rl.rewards: method grpo needs at least one reward"):
        load_config(cfg)


def rl_run(tmp_path, model, data, method: str, **rl) -> list[dict]:
    # 60 steps: over seeds 0-4, each method's reward rose by 4.5 or more (at 40 steps, 2 of 10 runs rose by under 2)
    cfg = write_config(
        tmp_path / "c.yaml",
        model,
        data,
        tmp_path / "runs",
        method=method,
        train={"max_steps": 60, "lr": 2e-2, "batch_size": 4, "log_every": 10},
        eval={"every": 60},
        rl={
            "rewards": [{"function": "test_rl:digit_share", "weight": 10.0}],
            "group_size": 4,
            "max_new_tokens": 12,
            **rl,
        },
    )
    train(load_config(cfg), quiet=True)
    return read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_online_rl_raises_the_reward_on_the_tiny_model(tmp_path, tiny_model_dir, date_data, method):
    records = rl_run(tmp_path, tiny_model_dir, date_data, method)
    first, last = records[0], records[-1]
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    # reward = 10 x digit share (RLOO's advantages keep the reward's scale: a share alone moves it slowly)
    assert last["reward"] > first["reward"] + 2, (first, last)
    assert last["val_reward"] > first["reward"] + 2, last  # held-out prompts, sampled the same way
    assert last["kl"] > 0
    assert all(r["clip_fraction"] == 0.0 for r in records)  # one step per sample: ratio 1 at the gradient
    assert 1 <= last["response_length"] <= 12


def test_reused_samples_engage_the_clip(tmp_path, tiny_model_dir, date_data):
    records = rl_run(tmp_path, tiny_model_dir, date_data, "grpo", iterations=2)
    assert max(r["clip_fraction"] for r in records) > 0  # the second step on a sample sees ratio != 1
    assert records[-1]["reward"] > records[0]["reward"]


def test_exact_match_needs_references_and_says_where_one_is_missing(tmp_path, tiny_model_dir, date_data):
    from helpers import cli_here

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "When?", "reference": "2001-01-01"}\n{"prompt": "And now?"}\n')
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        {"train": prompts, "val": prompts},
        tmp_path / "runs",
        method="grpo",
        rl={"rewards": [{"function": "exact_match"}]},
    )
    result = cli_here(["train", str(cfg)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "prompts.jsonl:2: reward exact_match needs a reference answer" in result.stderr
    assert not (tmp_path / "runs" / "tiny").exists()  # nothing half-written


@pytest.mark.parametrize(("method", "iterations", "passes"), [("grpo", 1, 1), ("grpo", 2, 3), ("rloo", 1, 2)])
def test_the_sampling_policy_s_log_probs_get_a_pass_only_where_they_differ_or_are_read(
    tmp_path, tiny_model_dir, date_data, monkeypatch, method, iterations, passes
):
    """Policy passes over a batch of sampled replies, besides the reference's: GRPO stepping once on
    it takes π_old from the loss's own pass (ρ = 1 there); stepping twice, π_old needs its own;
    RLOO folds the KL into the reward, so it reads π_old before any loss."""
    import tunesmith.methods.grpo as grpo

    calls = []
    monkeypatch.setattr(grpo, "token_logprobs", lambda *a: calls.append(1) or token_logprobs(*a))
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        method=method,
        data={"val": None},  # the steps' passes only
        train={"max_steps": 2, "batch_size": 2},
        rl={
            "rewards": [{"function": "test_rl:digit_share"}],
            "group_size": 2,
            "max_new_tokens": 4,
            "iterations": iterations,
        },
    )
    train(load_config(cfg), quiet=True)
    assert len(calls) == passes * (2 // iterations)  # per batch sampled


def test_evaluating_leaves_the_training_draws_alone(tmp_path, tiny_model_dir, date_data):
    """Validation samples replies too; a run that evaluates every other step trains exactly as one
    that never does (its samples drawn from the same random state)."""
    records = {}
    for every in (None, 2):
        cfg = write_config(
            tmp_path / f"{every}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / "runs",
            name=f"every-{every}",
            method="grpo",
            train={"max_steps": 4, "batch_size": 2},
            eval={"every": every},
            rl={"rewards": [{"function": "test_rl:digit_share"}], "group_size": 2, "max_new_tokens": 6},
        )
        train(load_config(cfg), quiet=True)
        records[every] = read_jsonl(tmp_path / "runs" / f"every-{every}" / "metrics.jsonl")
    assert sum("val_reward" in r for r in records[2]) == 2
    trained = [[(r["loss"], r["reward"]) for r in records[every]] for every in (None, 2)]
    assert trained[0] == trained[1]


def test_a_group_s_replies_packed_after_their_prompt_train_as_rows_of_their_own(
    tmp_path, tiny_model_dir, date_data, monkeypatch
):
    """GRPO packs each group's replies after their one prompt (the prompt computed once per pass):
    the same replies, rewards, losses and KL, step by step, as a run with a row per reply."""
    import tunesmith.methods.grpo as grpo
    import tunesmith.methods.rollout as rollout

    packed_rows = []
    shared_prefix_row = rollout.shared_prefix_row
    monkeypatch.setattr(rollout, "shared_prefix_row", lambda *a: packed_rows.append(1) or shared_prefix_row(*a))
    runs = {}
    for share in (True, False):
        packed_rows.clear()
        if not share:
            monkeypatch.setattr(grpo, "takes_segments", lambda model: False)
        cfg = write_config(
            tmp_path / f"{share}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / "runs",
            name=f"share-{share}",
            method="grpo",
            data={"val": None},
            train={"max_steps": 4, "batch_size": 2, "lr": 2e-2, "log_every": 1},
            rl={"rewards": [{"function": "test_rl:digit_share"}], "group_size": 4, "max_new_tokens": 8},
        )
        train(load_config(cfg), quiet=True)
        runs[share] = read_jsonl(tmp_path / "runs" / f"share-{share}" / "metrics.jsonl")
        assert len(packed_rows) == (4 * 2 if share else 0)  # a row per group: 2 prompts a step
    assert len(runs[True]) == len(runs[False]) == 4
    for shared, alone in zip(runs[True], runs[False]):
        for key in ("reward", "response_length", "loss", "kl", "tokens"):  # tokens: each reply with its prompt
            assert shared[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), (key, shared, alone)
