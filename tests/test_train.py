"""Full and LoRA fine-tuning lower the loss on a tiny model; the run directory has what it promises."""

import json

import pytest
import torch
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.engine.schedule import lr_factor
from tunesmith.run import train


@pytest.mark.parametrize("adapter", [{"type": "none"}, {"type": "lora", "r": 8, "alpha": 16}])
def test_training_lowers_loss(tmp_path, tiny_model_dir, date_data, adapter):
    lr = 3e-3 if adapter["type"] == "none" else 1e-2
    cfg_path = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        adapter=adapter,
        train={"max_steps": 30, "lr": lr},
        eval={"every": 30},
    )
    summary = train(load_config(cfg_path), quiet=True)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    assert records[-1]["val_loss"] < 0.6 * first
    assert all(r["tokens_per_s"] > 0 and "lr" in r for r in records)
    run = tmp_path / "runs" / "tiny"
    assert (run / "plots" / "loss.png").stat().st_size > 10_000
    assert (run / "config.yaml").is_file() and summary["steps"] == 30
    final = run / "final"
    if adapter["type"] == "lora":
        assert (final / "adapter_model.safetensors").is_file()
        assert json.loads((final / "adapter_config.json").read_text())["r"] == 8
    else:
        assert (final / "model.safetensors").is_file()
    assert (final / "tokenizer_config.json").is_file()


def test_lora_trains_only_the_adapter(tmp_path, tiny_model_dir, date_data):
    from safetensors.torch import load_file

    cfg_path = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", train={"max_steps": 3})
    train(load_config(cfg_path), quiet=True)
    weights = load_file(tmp_path / "runs" / "tiny" / "final" / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora_" in n for n in base)


def test_gradient_accumulation_matches_a_large_batch(tiny_model_dir, date_data, tokenizer):
    """Loss normalised over the whole accumulation window: 2 micro-batches of 4 = 1 batch of 8."""
    from tunesmith.config import validate_config
    from tunesmith.data.records import load_examples
    from tunesmith.engine.step import train_step
    from tunesmith.methods.sft import SFT
    from tunesmith.model.load import load_base

    cfg = validate_config(
        {
            "name": "x",
            "data": {"train": "unused.jsonl"},
            "train": {"max_steps": 1, "lr": 1e-2},
            "adapter": {"type": "none"},
        }
    )
    method = SFT(cfg)
    feats = [method.features(e, tokenizer) for e in load_examples(date_data["train"])[:8]]
    results = []
    for split in ([feats], [feats[:3], feats[3:]]):  # unequal token counts per micro-batch on purpose
        model = load_base(tiny_model_dir)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1.0)  # plain SGD: the update is the gradient itself
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        micro = [method.collate(f, tokenizer) for f in split]
        totals = train_step(
            model, method, micro, params, opt, sched, cfg.train.max_grad_norm, "fp32", torch.device("cpu")
        )
        assert totals.items == sum(b["n_items"] for b in micro)
        results.append((totals.loss / totals.items, totals.grad_norm, model.lm_head.weight.detach().clone()))
    (loss_a, norm_a, w_a), (loss_b, norm_b, w_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5) and norm_a == pytest.approx(norm_b, rel=1e-4)
    assert torch.allclose(w_a, w_b, atol=1e-6, rtol=1e-5)


def test_epochs_instead_of_steps_and_val_fraction(tmp_path, tiny_model_dir, date_data):
    cfg_path = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        data={"train": [{"path": str(date_data["train"])}], "val": None, "val_fraction": 0.25},
        train={"max_steps": None, "epochs": 1, "batch_size": 8},
    )
    summary = train(load_config(cfg_path), quiet=True)
    assert summary["steps"] == 9  # 96 examples, 24 held out for validation, 72 / 8


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "linear") == pytest.approx(0.0)
    assert lr_factor(70, 100, 0, "constant") == 1.0


def test_weighted_sources_follow_the_epoch_rule():
    from tunesmith.engine.sampler import EpochSampler

    s = EpochSampler([10, 4], [0.5, 2.0], lengths=[5] * 14, batch_size=3, seed=0)
    epoch = s.epoch_examples(0)
    assert len(epoch) == 5 + 8
    assert sorted(i for i in epoch if i >= 10) == [10, 10, 11, 11, 12, 12, 13, 13]
    assert epoch != s.epoch_examples(1) and epoch == s.epoch_examples(0)
    assert sum(len(b) for b in s.batches(0)) == 13 and s.batches_per_epoch() == len(s.batches(0))


def test_a_run_failing_before_its_first_step_leaves_nothing_behind(tmp_path, tiny_model_dir, date_data, monkeypatch):
    from tunesmith.methods.sft import SFT

    cfg_path = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs", train={"max_steps": 6})
    real_loss, calls = SFT.loss, {"n": 0}

    def failing_loss(self, model, batch, fail_at):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("out of memory")
        return real_loss(self, model, batch)

    monkeypatch.setattr(SFT, "loss", lambda self, m, b: failing_loss(self, m, b, fail_at=1))
    with pytest.raises(RuntimeError, match="out of memory"):
        train(load_config(cfg_path), quiet=True)
    assert not (tmp_path / "runs" / "tiny").exists()  # the corrected rerun is not blocked

    calls["n"] = 0  # failing later: the logged steps are kept for inspection and --resume
    monkeypatch.setattr(SFT, "loss", lambda self, m, b: failing_loss(self, m, b, fail_at=4))
    with pytest.raises(RuntimeError):
        train(load_config(cfg_path), quiet=True)
    assert [r["step"] for r in read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")] == [1, 2, 3]


def test_truncation_policy_truncate_or_drop(tmp_path, tiny_model_dir, date_data, tokenizer):
    from tunesmith.data.records import load_examples
    from tunesmith.methods.sft import SFT

    lengths = sorted(
        len(
            SFT(load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "r"))).features(
                e, tokenizer
            )["input_ids"]
        )
        for e in load_examples(date_data["train"])
    )
    cut = lengths[len(lengths) // 2]  # about half the examples are longer than this
    longer = sum(n > cut for n in lengths)
    assert 0 < longer < len(lengths)
    counts = {}
    for policy in ("truncate", "drop"):
        cfg = load_config(
            write_config(
                tmp_path / "c.yaml",
                tiny_model_dir,
                date_data,
                tmp_path / "r",
                data={"max_length": cut, "truncation": policy},
            )
        )
        method = SFT(cfg)
        kept = [f for f in (method.features(e, tokenizer) for e in load_examples(date_data["train"])) if f is not None]
        assert all(len(f["input_ids"]) <= cut for f in kept)
        counts[policy] = (len(kept), method.truncated, method.dropped)
    assert counts["drop"] == (len(lengths) - longer, 0, longer)
    assert counts["truncate"][0] + counts["truncate"][2] == len(lengths) and counts["truncate"][1] >= 1


def test_batches_split_by_token_budget_keep_order_and_bound_size():
    from tunesmith.engine.passes import split_by_tokens

    lengths = [10, 30, 20, 50, 5, 5]
    parts = split_by_tokens([0, 1, 2, 3, 4, 5], lengths, budget=60)
    assert [i for p in parts for i in p] == [0, 1, 2, 3, 4, 5]
    assert all(len(p) * max(lengths[i] for i in p) <= 60 for p in parts)
    assert parts == [[0, 1], [2], [3], [4, 5]]
    assert split_by_tokens([[0, 1], [2, 3]], lengths, budget=100) == [[[0, 1]], [[2, 3]]]  # packed rows: 40, 70
    assert split_by_tokens([0, 1], lengths, budget=None) == [[0, 1]]


def test_a_token_budget_splits_passes_without_changing_the_run(tmp_path, tiny_model_dir, date_data, monkeypatch):
    from tunesmith.engine import passes

    parts, split = [], passes.split_by_tokens
    monkeypatch.setattr(passes, "split_by_tokens", lambda *a: parts.append(len(split(*a))) or split(*a))
    curves = []
    for budget in (0, 64):  # 0: no limit
        cfg_path = write_config(
            tmp_path / f"{budget}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / str(budget),
            train={"max_steps": 4, "max_tokens_per_pass": budget},
        )
        train(load_config(cfg_path), quiet=True)
        curves.append([r["loss"] for r in read_jsonl(tmp_path / str(budget) / "tiny" / "metrics.jsonl")])
    assert parts[:4] == [1] * 4 and min(parts[4:]) > 1  # the second run made several passes per step
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)
