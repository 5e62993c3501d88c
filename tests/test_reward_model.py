"""method: reward on the tiny model: pairwise accuracy rises, and the export scores the same in plain
transformers as in training and as a reward for online RL."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli_here, read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.train import train


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from tunesmith.tasks.dates import write_preference_splits

    return write_preference_splits(tmp_path_factory.mktemp("rm-prefs"), n_train=96, n_val=32)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir, pairs):
    tmp = tmp_path_factory.mktemp("rm")
    cfg = write_config(tmp / "c.yaml", tiny_model_dir, pairs, tmp / "runs", method="reward",
                       train={"max_steps": 40, "lr": 3e-2}, eval={"every": 20})
    summary = train(load_config(cfg), quiet=True)
    return tmp / "runs" / "tiny", summary


def test_reward_model_learns_to_rank_held_out_pairs(reward_run):
    run, summary = reward_run
    records = read_jsonl(run / "metrics.jsonl")
    first = records[0]
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # a new head starts at zero: ln 2
    vals = [r for r in records if "val_accuracy" in r]
    # 32 held-out pairs, chance 0.5; a third of the rejected replies are prose (easy), the rest
    # a wrong ISO date (the tiny random model must learn to read the sentence)
    # (measured: accuracy 0.69, loss 0.42)
    assert vals[-1]["val_accuracy"] >= 0.65, vals
    assert vals[-1]["val_loss"] < 0.55, vals
    cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"]


def pair_batch(tokenizer, pairs_file, n=8):
    from tunesmith.data.records import load_examples
    from tunesmith.methods.reward import RewardModelling
    from tunesmith.config import validate_config

    examples = load_examples(pairs_file)[:n]
    method = RewardModelling(validate_config({"name": "x", "data": {"train": "x"}, "train": {"max_steps": 1}}))
    return method.collate([method.features(e, tokenizer) for e in examples], tokenizer), examples


def test_merged_export_scores_the_same_in_plain_transformers(reward_run, pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.methods.reward import sequence_scores
    from tunesmith.methods.rewards import RewardModelScorer

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
    from tunesmith.methods.rewards import RewardModelScorer

    with pytest.raises(UserError, match="not a reward model"):
        RewardModelScorer(str(tiny_model_dir))


@pytest.mark.parametrize("overrides, message", [
    (["eval.test=t.jsonl"], "eval.test: method reward trains a scorer"),
    (["adapter.type=prefix"], "adapter.type prefix: a reward model reads its score off the last token"),
])
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
