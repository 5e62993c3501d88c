"""method: reward on the tiny model: pairwise accuracy rises, and the export scores the same in plain
transformers as in training and as a reward for online RL."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli_here, read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.run import train


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from tunesmith.tasks.dates import write_preference_splits

    return write_preference_splits(tmp_path_factory.mktemp("rm-prefs"), n_train=192, n_val=128)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir, pairs):
    tmp = tmp_path_factory.mktemp("rm")
    # lr 1e-2: at 3e-2 the run was chaotic, its held-out accuracy moving by 0.2 with the seed or
    # the CPU's kernels (AVX-512 vs AVX2); at 1e-2 and 3e-3 three seeds on both kernel sets agree
    cfg = write_config(
        tmp / "c.yaml",
        tiny_model_dir,
        pairs,
        tmp / "runs",
        method="reward",
        train={"max_steps": 60, "lr": 1e-2},
        eval={"every": 30},
    )
    summary = train(load_config(cfg), quiet=True)
    return tmp / "runs" / "tiny", summary


def held_out_accuracy(run, pairs_file) -> dict[str, tuple[float, int]]:
    """Pairwise accuracy of the trained scorer on held-out pairs, by kind of rejected reply."""
    from tunesmith.methods.rl_rewards import RewardModelScorer
    from tunesmith.tasks.dates import PROSE_ANSWER

    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]

    def chat(r, reply):
        return [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": reply}]

    scorer = RewardModelScorer(str(run))
    chosen, rejected = scorer([chat(r, r["chosen"]) for r in rows]), scorer([chat(r, r["rejected"]) for r in rows])
    kinds: dict[str, list[bool]] = {}
    for r, c, j in zip(rows, chosen, rejected):
        kinds.setdefault("prose" if r["rejected"].startswith(PROSE_ANSWER) else "wrong date", []).append(c > j)
    return {k: (sum(v) / len(v), len(v)) for k, v in kinds.items()}


def test_reward_model_learns_to_rank_held_out_pairs(reward_run, pairs):
    run, summary = reward_run
    records = read_jsonl(run / "metrics.jsonl")
    first = records[0]
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # a new head starts at zero: ln 2
    # 128 held-out pairs; a third reject prose for the ISO date (learnable by the 2-layer random
    # model), the rest a wrong ISO date (reading the date: beyond it in 60 steps, it stays at chance).
    # Measured on 3 seeds, AVX-512 and AVX2 kernels alike: prose pairs 1.0 (53 of 53), wrong dates
    # 0.45-0.56, validation loss 0.41 from ln 2 = 0.693.
    accuracy = held_out_accuracy(run, pairs["val"])
    prose, n_prose = accuracy["prose"]
    assert n_prose >= 40, accuracy
    # chance is 0.5: P(accuracy >= 0.9 on 40+ pairs by chance) < 1e-6
    assert prose >= 0.9, accuracy
    vals = [r for r in records if "val_loss" in r]
    assert vals[-1]["val_loss"] < 0.55, vals  # a scorer ranking at chance stays near ln 2
    cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"]


def pair_batch(tokenizer, pairs_file, n=8):
    from tunesmith.config import validate_config
    from tunesmith.data.records import load_examples
    from tunesmith.methods.reward_model import RewardModelling

    examples = load_examples(pairs_file)[:n]
    method = RewardModelling(validate_config({"name": "x", "data": {"train": "x"}, "train": {"max_steps": 1}}))
    return method.collate([method.features(e, tokenizer) for e in examples], tokenizer), examples


def test_merged_export_scores_the_same_in_plain_transformers(reward_run, pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.methods.reward_model import sequence_scores
    from tunesmith.methods.rl_rewards import RewardModelScorer

    run, _ = reward_run
    result = cli_here(["export", str(run), "--to", str(tmp_path / "rm"), "--merge"], tmp_path)
    assert result.returncode == 0, result.stderr
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    batch, examples = pair_batch(tok, pairs["val"])
    with torch.no_grad():
        hf = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        ours = sequence_scores(plain, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(hf, ours)  # transformers' own pooling reads the same last token
    # the run directory (adapter + head) and the merged export score alike, as a reward for RL
    from_run = RewardModelScorer(str(run))([e.messages for e in examples])
    from_export = RewardModelScorer(str(tmp_path / "rm"))([e.messages for e in examples])
    assert from_run == pytest.approx(from_export, abs=1e-4)
    assert from_export == pytest.approx(ours.tolist()[: len(examples)], abs=1e-4)


def test_a_language_model_is_not_taken_for_a_reward_model(tiny_model_dir):
    from tunesmith.errors import UserError
    from tunesmith.methods.rl_rewards import RewardModelScorer

    with pytest.raises(UserError, match="not a reward model"):
        RewardModelScorer(str(tiny_model_dir))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.test=t.jsonl"], "eval.test: method reward trains a scorer"),
        (["adapter.type=prefix"], "adapter.type prefix: a reward model reads its score off the last token"),
    ],
)
def test_reward_config_errors(tmp_path, tiny_model_dir, pairs, overrides, message):
    from tunesmith.errors import UserError

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, pairs, tmp_path / "runs", method="reward")
    with pytest.raises(UserError, match=message):
        load_config(cfg, overrides)


def test_pairs_are_required(tmp_path, tiny_model_dir, date_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", method="reward")
    result = cli_here(["train", str(cfg)], tmp_path)
    assert result.returncode == 2
    assert "train.jsonl:1: method reward trains on pairs" in result.stderr
