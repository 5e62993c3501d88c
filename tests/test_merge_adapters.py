"""tunesmith merge --method: LoRA adapters on one base merged through PEFT into one adapter folder
that plain PEFT reloads with identical outputs; task arithmetic is the exact sum of the updates."""

import pytest
import torch
from helpers import cli, write_config

from tunesmith.config import load_config
from tunesmith.run import train

TEXT = "Text: Tom flew to Paris on 3 May 2021. Date:"


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, tiny_model_dir, date_data):
    out = {}
    for name, lr, seed, r in (("a", 1e-2, 0, 8), ("b", 5e-3, 1, 8), ("c", 5e-3, 2, 4)):
        tmp = tmp_path_factory.mktemp(name)
        cfg = write_config(
            tmp / "c.yaml",
            tiny_model_dir,
            date_data,
            tmp / "runs",
            name=name,
            train={"max_steps": 6, "lr": lr, "seed": seed, "precision": "fp32"},
            adapter={"type": "lora", "r": r, "alpha": 2 * r, "targets": "all-linear"},
        )
        train(load_config(cfg), quiet=True)
        out[name] = tmp / "runs" / name
    return out


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


@pytest.mark.parametrize(
    "method,density",
    [("linear", None), ("task_arithmetic", None), ("ties", 0.5), ("dare_linear", 0.5), ("dare_ties", 0.5)],
)
def test_a_merged_adapter_reloads_in_plain_peft_with_identical_outputs(
    tmp_path, tiny_model_dir, two_adapters, method, density
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.export.weight_space import merge_adapters, merged_adapter_model
    from tunesmith.model.load import load_tokenizer

    sources = [str(two_adapters["a"]), str(two_adapters["b"])]
    if method == "ties":  # the command once; the others through the function it calls
        args = ["merge", *sources, "--method", method, "--weights", "0.7,0.5", "--to", str(tmp_path / "m")]
        done = cli(args + ["--density", str(density)], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        merge_adapters(sources, method, tmp_path / "m", [0.7, 0.5], density)
    tokenizer = load_tokenizer(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "m").eval()
    in_memory, _ = merged_adapter_model(sources, method, [0.7, 0.5], density)
    assert torch.equal(logits(reloaded, tokenizer), logits(in_memory, tokenizer))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.equal(logits(reloaded, tokenizer), logits(base, tokenizer))


def test_task_arithmetic_adds_the_weighted_updates_exactly(tiny_model_dir, two_adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.export.weight_space import merged_adapter_model

    def merged_weights(model):
        return {n: p.detach().clone() for n, p in model.merge_and_unload().named_parameters()}

    base = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()}
    deltas = []
    for name in ("a", "c"):  # ranks 8 and 4: task arithmetic takes adapters of any rank
        m = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), two_adapters[name] / "final"
        )
        deltas.append({n: w - base[n] for n, w in merged_weights(m).items()})
    model, _ = merged_adapter_model([str(two_adapters["a"]), str(two_adapters["c"])], "task_arithmetic", [0.7, -0.5])
    got = merged_weights(model)
    for n in base:
        assert torch.allclose(got[n], base[n] + 0.7 * deltas[0][n] - 0.5 * deltas[1][n], atol=1e-6), n


def test_bad_merges_are_one_clear_error(tmp_path, two_adapters):
    from tunesmith.errors import UserError
    from tunesmith.export.weight_space import merge_adapters

    a, c = str(two_adapters["a"]), str(two_adapters["c"])
    for sources, method, weights, density, says in (
        ([a, c], "ties", None, 0.5, "needs one rank"),
        ([a, c], "ties", None, None, "--density"),
        ([a, c], "mean", None, None, "--method mean"),
        ([a, c], "linear", [1.0], None, "1 given for 2"),
        ([a], "linear", None, None, "two or more"),
    ):
        with pytest.raises(UserError, match=says):
            merge_adapters(sources, method, tmp_path / "x", weights, density)
        assert not (tmp_path / "x").exists()
    done = cli(["merge", a, c, "--method", "ties", "--density", "0.5", "--to", str(tmp_path / "x")], tmp_path)
    assert done.returncode == 2 and "needs one rank" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()
