"""Preference losses against hand-computed values, and DPO/KTO through the one engine on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.methods.preference_losses import bradley_terry_loss, kto_loss, paired_loss
from tunesmith.run import train


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpo_sigmoid_matches_hand_computed_values():
    losses, chosen, rejected = paired_loss(
        "sigmoid", t([-0.5, -10, -1]), t([-0.1, -30, -21]), t([-0.5, -10.1, -0.1]), t([-0.1, -20.1, -0.1]), beta=0.1
    )
    assert losses.tolist() == pytest.approx([0.6931, 0.3133, 0.1269], abs=1e-4)
    assert losses[0].item() == pytest.approx(math.log(2), abs=1e-12)  # policy = reference: ln 2
    assert chosen.tolist() == pytest.approx([0.0, 0.01, -0.09])
    assert rejected.tolist() == pytest.approx([0.0, -0.99, -2.09])


def test_label_smoothing_ipo_and_hinge_match_hand_computed_values():
    # h = (pi_c - ref_c) - (pi_r - ref_r) = 0, 10, 20 as above
    args = (t([-0.5, -10, -1]), t([-0.1, -30, -21]), t([-0.5, -10.1, -0.1]), t([-0.1, -20.1, -0.1]))
    smoothed, _, _ = paired_loss("sigmoid", *args, beta=0.1, label_smoothing=0.1)
    expected = [-(0.9 * math.log(sigma(0.1 * h)) + 0.1 * math.log(sigma(-0.1 * h))) for h in (0, 10, 20)]
    assert smoothed.tolist() == pytest.approx(expected, abs=1e-9)
    assert paired_loss("ipo", *args, beta=0.1)[0].tolist() == pytest.approx([25.0, 25.0, 225.0])  # (h - 5)^2
    assert paired_loss("hinge", *args, beta=0.1)[0].tolist() == pytest.approx([1.0, 0.0, 0.0])  # max(0, 1 - h/10)


def test_reference_free_losses_match_hand_computed_values():
    chosen, rejected = t([-0.5, -0.2]), t([-1.0, -1.2])  # mean log-prob per token
    simpo, c_reward, _ = paired_loss("simpo", chosen, rejected, None, None, beta=2.0, gamma=1.0)
    assert simpo.tolist() == pytest.approx([math.log(2), -math.log(sigma(1.0))], abs=1e-9)  # 2*0.5-1=0, 2*1-1=1
    assert c_reward.tolist() == pytest.approx([-1.0, -0.4])

    def log_odds(m):
        return math.log(math.exp(m) / (1 - math.exp(m)))

    orpo, _, _ = paired_loss("orpo", chosen, rejected, None, None, beta=0.1)
    expected = [-math.log(sigma(log_odds(c) - log_odds(r))) for c, r in ((-0.5, -1.0), (-0.2, -1.2))]
    assert orpo.tolist() == pytest.approx(expected, abs=1e-9)
    assert expected[0] == pytest.approx(0.3203, abs=1e-4)
    with pytest.raises(ValueError, match="needs reference"):
        paired_loss("sigmoid", chosen, rejected, None, None, beta=0.1)


def test_kto_matches_hand_computed_values():
    policy, ref = t([2.5, -0.5, 2.0]), t([0.5, 0.5, 0.0])  # rewards r = 2.0, -1.0, 2.0
    desirable = torch.tensor([True, False, True])
    losses, rewards = kto_loss(policy, ref, desirable, t(0.5), beta=0.1)
    assert losses.tolist() == pytest.approx([1 - sigma(0.15), 1 - sigma(0.15), 1 - sigma(0.15)], abs=1e-12)
    assert rewards.tolist() == pytest.approx([0.2, -0.1, 0.2])
    clamped, _ = kto_loss(policy, ref, desirable, t(-3.0), beta=0.1, undesirable_weight=2.0)  # z clamps at 0
    assert clamped.tolist() == pytest.approx([1 - sigma(0.2), 2 * (1 - sigma(0.1)), 1 - sigma(0.2)], abs=1e-12)


def test_bradley_terry_matches_hand_computed_values():
    losses = bradley_terry_loss(t([1.0, 0.0, 3.0]), t([0.0, 0.0, 1.0]), t([0.0, 0.0, 1.0]))
    assert losses.tolist() == pytest.approx([-math.log(sigma(1.0)), math.log(2), -math.log(sigma(1.0))], abs=1e-12)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """64 training pairs of every kind; held out, the ~80 of 192 pairs whose rejected reply is prose.

    The tiny random model learns to prefer the ISO date over prose in 20-30 steps; pairs whose
    rejected reply is a wrong ISO date stay near chance (it cannot read dates yet), so on a mixed
    set a working method scored 0.59-0.70 on 64 pairs, too close to chance (0.5) to tell."""
    from tunesmith.tasks.dates import PROSE_ANSWER, write_preference_splits

    splits = write_preference_splits(tmp_path_factory.mktemp("prefs"), n_train=64, n_val=192)
    prose = [
        line for line in splits["val"].read_text().splitlines() if json.loads(line)["rejected"].startswith(PROSE_ANSWER)
    ]
    assert len(prose) >= 60, len(prose)
    splits["val"] = splits["val"].with_name("val-prose.jsonl")
    splits["val"].write_text("".join(line + "\n" for line in prose))
    return splits


# Held-out accuracy: chance is 0.5 (before training every implicit margin is 0, counted as wrong),
# measured 1.0 for every loss on the ~80 prose pairs; P(>= 0.9 by chance on 60+ pairs) < 1e-9.
HELD_OUT_ACCURACY = 0.9


@pytest.mark.parametrize("adapter", [{"type": "lora", "r": 8, "alpha": 16}, {"type": "none"}])
def test_first_dpo_step_is_ln2_and_training_raises_preference_accuracy(tmp_path, tiny_model_dir, pairs, adapter):
    """Policy = reference before the first update, so the first loss is ln 2 exactly: with an adapter
    the reference is the adapter switched off, for full fine-tuning log-probs computed beforehand."""
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        pairs,
        tmp_path / "runs",
        method="dpo",
        adapter=adapter,
        train={"max_steps": 30, "lr": 1e-2 if adapter["type"] == "lora" else 1e-3},
        eval={"every": 30},
        preference={"loss": "sigmoid", "beta": 0.1},
    )
    train(load_config(cfg), quiet=True)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert records[-1]["loss"] < 0.5 and records[-1]["accuracy"] > 0.8, records[-1]
    assert records[-1]["val_accuracy"] >= HELD_OUT_ACCURACY, records[-1]  # held-out pairs
    if adapter["type"] == "none":
        assert (tmp_path / "runs" / "tiny" / "reference_logps.json").is_file()


@pytest.mark.parametrize("loss", ["ipo", "hinge", "simpo", "orpo", "kto"])
def test_every_preference_loss_trains(tmp_path, tiny_model_dir, pairs, loss):
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        pairs,
        tmp_path / "runs",
        method="dpo",
        train={"max_steps": 20, "lr": 1e-2},
        eval={"every": 20},
        preference={"loss": loss},
    )
    train(load_config(cfg), quiet=True)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    if loss != "kto":  # KTO's reference point moves with the policy: see the next test
        assert records[-1]["loss"] < records[0]["loss"], (loss, records[0]["loss"], records[-1]["loss"])
    assert records[-1]["val_accuracy"] >= HELD_OUT_ACCURACY, records[-1]


def test_kto_reads_single_judged_responses(tmp_path, tiny_model_dir, pairs):
    rows = []
    for line in pairs["train"].read_text().splitlines():
        r = json.loads(line)
        rows += [
            {"prompt": r["prompt"], "completion": r["chosen"], "label": True},
            {"prompt": r["prompt"], "completion": r["rejected"], "label": False},
        ]
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"train": path, "val": pairs["val"]}
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        data,
        tmp_path / "runs",
        method="dpo",
        train={"max_steps": 30, "lr": 3e-3},
        eval={"every": 30},
        preference={"loss": "kto"},
    )
    train(load_config(cfg), quiet=True)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(0.5)  # r = 0 = z: 1 - sigmoid(0) for every response
    # the reference point moves with the policy, so KTO's loss is no progress measure; rewards are
    last = records[-5:]
    assert sum(r["rewards_desirable"] - r["rewards_undesirable"] for r in last) > 0, last
    assert records[-1]["val_accuracy"] >= HELD_OUT_ACCURACY, records[-1]  # held-out pairs, each side judged alone


def test_pairs_are_required_for_paired_losses(tmp_path, tiny_model_dir, date_data):
    from helpers import cli_here

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", method="dpo")
    result = cli_here(["train", str(cfg)], tmp_path)
    assert result.returncode == 2
    assert "train.jsonl:1: preference loss 'sigmoid' needs pairs" in result.stderr
    assert not (tmp_path / "runs" / "tiny").exists()


def test_nll_weight_adds_the_chosen_replys_nll_per_token(tiny_model_dir, pairs):
    """RPO: loss = DPO loss + w * (-log p(chosen) / tokens), pair by pair."""
    from tunesmith.config import validate_config
    from tunesmith.data.records import load_examples
    from tunesmith.methods.logprobs import sequence_logprobs
    from tunesmith.methods.preference import PairedPreference
    from tunesmith.methods.reference import ReferenceModel
    from tunesmith.model.adapters import apply_adapter
    from tunesmith.model.load import load_base, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tree = {"name": "x", "method": "dpo", "data": {"train": "x"}, "train": {"max_steps": 1}}
    cfg = validate_config(tree)
    model = apply_adapter(load_base(tiny_model_dir), cfg.adapter)
    plain, rpo = PairedPreference(cfg), PairedPreference(validate_config({**tree, "preference": {"nll_weight": 0.5}}))
    features = [plain.features(e, tok) for e in load_examples(pairs["train"])[:4]]
    batch = plain.collate(features, tok)
    for m in (plain, rpo):
        m.reference = ReferenceModel(model)
    with torch.no_grad():
        base_loss, _ = plain.loss(model, batch)
        rpo_loss, _ = rpo.loss(model, batch)
        sums, counts = sequence_logprobs(model, batch)
    nll = (-sums[:4] / counts[:4]).sum()
    assert float(base_loss) == pytest.approx(4 * math.log(2), abs=1e-5)  # policy = reference
    assert float(rpo_loss) == pytest.approx(float(base_loss + 0.5 * nll), rel=1e-5)


def test_pairs_packed_after_their_prompt_train_as_rows_of_their_own(tmp_path, tiny_model_dir, pairs, monkeypatch):
    """DPO packs each pair after its prompt (the prompt computed once per pass): the same losses,
    margins and held-out accuracy, step by step, as a run with a row per response."""
    import tunesmith.methods.preference as preference
    import tunesmith.methods.reference as reference

    shared_passes = []
    as_computed = preference.as_computed

    def counted(batch, takes_segments):
        rows = as_computed(batch, takes_segments)
        shared_passes.append(rows is not batch)
        return rows

    monkeypatch.setattr(preference, "as_computed", counted)
    runs = {}
    for share in (True, False):
        if not share:  # neither the policy's passes nor the reference's
            monkeypatch.setattr(preference, "takes_segments", lambda model: False)
            monkeypatch.setattr(reference, "takes_segments", lambda model: False)
        shared_passes.clear()
        cfg = write_config(
            tmp_path / f"{share}.yaml",
            tiny_model_dir,
            pairs,
            tmp_path / "runs",
            name=f"share-{share}",
            method="dpo",
            train={"max_steps": 6, "lr": 1e-2, "log_every": 1},
            eval={"every": 6},
            preference={"loss": "sigmoid", "beta": 0.1},
        )
        train(load_config(cfg), quiet=True)
        runs[share] = read_jsonl(tmp_path / "runs" / f"share-{share}" / "metrics.jsonl")
        assert shared_passes and all(shared_passes) == share and any(shared_passes) == share
    assert len(runs[True]) == len(runs[False]) == 6
    for shared, alone in zip(runs[True], runs[False]):
        for key in ("loss", "margin", "accuracy", "tokens"):
            assert shared[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), (key, shared, alone)
    assert runs[True][-1]["val_accuracy"] == runs[False][-1]["val_accuracy"]
