"""Scores during training: eval.generate_every, early stopping, output.keep_best."""

import pytest
from helpers import read_jsonl, write_config
from safetensors.torch import load_file

from tunesmith.config import load_config
from tunesmith.engine.watched_score import EarlyStop
from tunesmith.errors import UserError
from tunesmith.run import train

# full fine-tuning of the tiny model at a high rate: token F1 on the dates rises in a few steps,
# then wanders below its peak while the loss still falls (measured: peak 0.071 by step 6 of 40)
WATCHED = {"every": 2, "generate_every": 2, "generate_limit": 16, "max_new_tokens": 12}


def config(tmp_path, tiny_model_dir, date_data, max_steps=60, **sections):
    return write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": max_steps, "lr": 1e-2},
        adapter={"type": "none"},
        **sections,
    )


def evaluations(run_dir, metric):
    return [(r["step"], r[metric]) for r in read_jsonl(run_dir / "metrics.jsonl") if metric in r]


def test_early_stopping_counts_evaluations_without_improvement():
    stop = EarlyStop("val_exact_match", patience=2, min_delta=0.05, state=None)
    seen = [
        stop.update(step, {"val_exact_match": v})
        for step, v in ((2, 0.1), (4, 0.3), (6, 0.33), (8, 0.5), (10, 0.52), (12, 0.4))
    ]
    assert seen[:5] == [None] * 5 and "since step 8" in seen[5]  # 0.33 and 0.52 are within min_delta
    loss = EarlyStop("val_loss", patience=1, min_delta=0.0, state=None)
    assert loss.update(2, {"val_loss": 2.0}) is None and loss.update(4, {"val_loss": 1.5}) is None
    assert loss.update(6, {"val_loss": 1.6}) is not None  # lower is better for a loss


def test_generate_every_logs_task_scores_and_early_stopping_ends_the_run(tmp_path, tiny_model_dir, date_data):
    cfg = config(
        tmp_path,
        tiny_model_dir,
        date_data,
        eval={**WATCHED, "early_stopping": {"metric": "val_token_f1", "patience": 3}},
    )
    summary = train(load_config(cfg), quiet=True)
    run_dir = tmp_path / "runs" / "tiny"
    scores = evaluations(run_dir, "val_token_f1")
    assert [s for s, _ in scores] == list(range(2, summary["steps"] + 1, 2))  # every 2 steps, as asked
    assert all("val_exact_match" in r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_token_f1" in r)
    assert summary["steps"] < 60 and summary["stopped_early"]["step"] == summary["steps"]
    # the logged scores justify the stop: the best came `patience` evaluations before it, and none since beat it
    best_at = max(range(len(scores)), key=lambda i: (scores[i][1], -i))
    assert len(scores) - 1 - best_at == 3
    assert f"since step {scores[best_at][0]}" in summary["stopped_early"]["reason"]
    assert f"stopped early at step {summary['steps']}: val_token_f1" in (run_dir / "report.md").read_text()


def test_keep_best_makes_the_best_scored_weights_the_final_model(tmp_path, tiny_model_dir, date_data):
    from transformers import AutoModelForCausalLM

    from tunesmith.data.records import load_examples
    from tunesmith.eval.task import evaluate_task
    from tunesmith.model.load import load_tokenizer

    cfg = config(tmp_path, tiny_model_dir, date_data, eval=WATCHED, max_steps=24, output={"keep_best": "val_token_f1"})
    summary = train(load_config(cfg), quiet=True)
    run_dir = tmp_path / "runs" / "tiny"
    scores = evaluations(run_dir, "val_token_f1")
    best_step, best_value = max(scores, key=lambda s: (s[1], -s[0]))
    assert best_step < 24, "the scores peaked before the end: a kept best means something here"
    assert summary["best"] == {"metric": "val_token_f1", "value": pytest.approx(best_value), "step": best_step}
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    kept = load_file(run_dir / "best" / f"trainable-{best_step}.safetensors")
    state = final.state_dict()
    assert all(state[k].equal(v) for k, v in kept.items())
    report = (run_dir / "report.md").read_text()
    assert f"the final model is step {best_step}'s weights, the best val_token_f1" in report
    rescored = evaluate_task(
        final,
        load_tokenizer(run_dir / "final"),
        load_examples(date_data["val"])[:16],
        label="final",
        max_new_tokens=12,
        latency_samples=0,
    )
    assert rescored["scores"]["token_f1"]["mean"] == pytest.approx(best_value)


def test_a_watched_score_the_run_does_not_measure_is_named(tmp_path, tiny_model_dir, date_data):
    with pytest.raises(Exception, match="set eval.generate_every"):
        load_config(config(tmp_path, tiny_model_dir, date_data, output={"keep_best": "val_exact_match"}))
    cfg = config(tmp_path, tiny_model_dir, date_data, eval={**WATCHED, "early_stopping": {"metric": "val_exact_macth"}})
    with pytest.raises(UserError, match=r"val_exact_macth: not among .*val_exact_match"):
        train(load_config(cfg), quiet=True)


def test_scoring_during_training_leaves_the_trajectory_unchanged(tmp_path, tiny_model_dir, date_data):
    losses = {}
    for watched in (False, True):
        cfg = write_config(
            tmp_path / f"c{watched}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / f"runs{watched}",
            train={"max_steps": 8, "lr": 1e-2, "log_every": 1, "precision": "fp32"},
            adapter={"type": "lora", "dropout": 0.1},  # dropout draws from the RNG every step
            eval=WATCHED if watched else {"every": 2},
        )
        train(load_config(cfg), quiet=True)
        records = read_jsonl(tmp_path / f"runs{watched}" / "tiny" / "metrics.jsonl")
        assert watched == any("val_token_f1" in r for r in records)
        losses[watched] = [(r["step"], r["loss"], r.get("val_loss")) for r in records]
    assert losses[True] == losses[False]
