"""Packing is exact: a packed row computes what each of its examples computes alone."""

import pytest
import torch
from helpers import read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.data.packing import pack_features, pack_rows
from tunesmith.data.records import load_examples
from tunesmith.methods.sft import SFT
from tunesmith.model.load import load_base
from tunesmith.run import train


def sft_features(cfg_path, data_path, tokenizer, n):
    method = SFT(load_config(cfg_path))
    return method, [method.features(e, tokenizer) for e in load_examples(data_path)[:n]]


def test_packed_row_logits_equal_each_example_alone(tmp_path, tiny_model_dir, date_data, tokenizer):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs")
    method, feats = sft_features(cfg, date_data["train"], tokenizer, 3)
    model = load_base(tiny_model_dir).eval()
    batch = method.collate([pack_features(feats)], tokenizer)
    assert batch["attention_mask"] is None
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for f in feats:
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            n = len(f["input_ids"])
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=0)
            start += n


def test_packed_batch_loss_equals_unpacked_loss(tmp_path, tiny_model_dir, date_data, tokenizer):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs")
    method, feats = sft_features(cfg, date_data["train"], tokenizer, 6)
    model = load_base(tiny_model_dir).eval()
    with torch.no_grad():
        plain_sum, _ = method.loss(model, method.collate(feats, tokenizer))
        rows = [
            pack_features(feats[:2]),
            pack_features(feats[2:5]),
            pack_features(feats[5:]),
        ]  # ragged rows: padding too
        packed_batch = method.collate(rows, tokenizer)
        packed_sum, _ = method.loss(model, packed_batch)
    assert packed_batch["n_items"] == method.collate(feats, tokenizer)["n_items"]
    assert float(packed_sum) == pytest.approx(float(plain_sum), rel=1e-5)


def test_pack_rows_uses_every_example_once_within_the_limit():
    lengths = [5, 90, 33, 60, 12, 70, 8, 40, 100, 1] * 30
    rows = pack_rows(list(range(len(lengths))), lengths, max_length=100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) <= sum(lengths) / 100 * 1.1  # nearly full rows


def test_packed_and_unpacked_runs_reach_the_same_loss(tmp_path, tiny_model_dir, date_data):
    finals = {}
    for packing in (False, True):
        name = f"packed-{packing}".lower()
        # same examples per step: 2 packed rows of 512 tokens hold about 8 examples of ~110 tokens
        cfg = write_config(
            tmp_path / f"{name}.yaml",
            tiny_model_dir,
            date_data,
            tmp_path / "runs",
            name=name,
            data={"packing": packing, "max_length": 512},
            train={"epochs": 3, "max_steps": None, "batch_size": 2 if packing else 8, "lr": 3e-3},
            adapter={"type": "none"},
        )
        summary = train(load_config(cfg), quiet=True)
        finals[packing] = (summary["val_loss"], read_jsonl(tmp_path / "runs" / name / "metrics.jsonl"))
    (val_plain, _), (val_packed, log_packed) = finals[False], finals[True]
    assert log_packed[-1]["loss"] < 0.6 * log_packed[0]["loss"]
    assert val_packed == pytest.approx(val_plain, rel=0.1), (val_plain, val_packed)


@pytest.mark.parametrize("bf16", [False, True])
def test_packed_rows_rounded_up_in_width_train_as_unrounded(
    tmp_path, tiny_model_dir, date_data, tokenizer, monkeypatch, bf16
):
    """Packed rows are padded to a multiple of PACKED_WIDTH_MULTIPLE tokens (one shape for nearly
    every pass); the extra padding changes the loss and gradients only by the order of their sums."""
    from tunesmith.data import collate

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, date_data, tmp_path / "runs")
    method, feats = sft_features(cfg, date_data["train"], tokenizer, 5)
    model = load_base(tiny_model_dir).train()
    rows = [pack_features(feats[:3]), pack_features(feats[3:])]

    def loss_and_grads(multiple):
        monkeypatch.setattr(collate, "PACKED_WIDTH_MULTIPLE", multiple)
        batch = method.collate(rows, tokenizer)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = method.loss(model, batch)
        loss.backward()
        return batch, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    exact_batch, exact_loss, exact_grads = loss_and_grads(1)
    batch, loss, grads = loss_and_grads(64)
    width = batch["input_ids"].shape[1]
    assert width % 64 == 0 and width > exact_batch["input_ids"].shape[1]
    assert (batch["n_items"], batch["n_tokens"]) == (exact_batch["n_items"], exact_batch["n_tokens"])
    # A weight's gradient sums over tokens, and the matmul library blocks a longer sum differently
    # (and may pick other kernels for other shapes): fp32 sums in another order (measured on a Zen 4:
    # the loss equal, gradients at most 2.5e-7 of their scale apart), bf16 products rounded in other
    # places (the loss 2e-7 apart, gradients at most 0.56%; bf16 keeps 8 bits, 0.4%). The bounds
    # leave room for other CPUs' kernels; a trained or attended padding moves them by whole percents.
    tolerance = 3e-2 if bf16 else 1e-5
    torch.testing.assert_close(loss, exact_loss, rtol=1e-5 if bf16 else 1e-6, atol=0)
    for name, g in grads.items():
        scale = float(exact_grads[name].abs().max())
        torch.testing.assert_close(g, exact_grads[name], rtol=0, atol=tolerance * scale, msg=name)
