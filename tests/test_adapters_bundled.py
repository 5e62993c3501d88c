"""Every adapter type on the real bundled model: 8 to 12 small steps on the quickstart task lift its
test score clearly above the untuned base model's, and training starts from the base model's
behaviour (no adapter derails it before the first update). LoRA's run on the bundled model is the
quickstart's (test_bundled_model.py). Marked slow: about 20 s per type on a 2-core CPU with
native bf16."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import read_jsonl

from tunesmith.config import validate_config
from tunesmith.model.resolve import BUNDLED_ALIAS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bundled_types")]  # one worker: the base model scored once

BATCH, TEST_EXAMPLES = 4, 32
# adapter, learning rate (constant; each type's usual range, high end, for a short run), steps: what the
# assertion below needs with room to spare (after 8, every type but prompt tuning scores 0.41 to 0.62; the bar is 0.15)
TYPES = {
    "qlora": ({"type": "qlora", "r": 16, "alpha": 32}, 2e-3, 8),
    "ia3": ({"type": "ia3"}, 3e-2, 8),
    "prefix": ({"type": "prefix", "virtual_tokens": 16}, 3e-2, 8),
    # prompt tuning learns slowest on a small model: started from a hint of the answer format, and 12 steps
    # (after 8 its score is 0.19, a single example past the bar)
    "prompt": (
        {"type": "prompt", "virtual_tokens": 16, "init_text": "Reply with the date only, in the format YYYY-MM-DD."},
        3e-2,
        12,
    ),
    "full": ({"type": "none"}, 1e-4, 8),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The quickstart splits, the untuned model's exact match on the test examples used here, and
    its mean loss per trained token on training examples."""
    from tunesmith.data.collate import collate_tokens
    from tunesmith.data.records import load_examples
    from tunesmith.eval.task import evaluate_task
    from tunesmith.methods.sft import SFT
    from tunesmith.model.load import load_for_inference
    from tunesmith.runtime.precision import inference_dtype
    from tunesmith.tasks.dates import write_splits

    tmp = tmp_path_factory.mktemp("bundled-types")
    splits = write_splits(tmp / "data")
    model, tok = load_for_inference(BUNDLED_ALIAS, dtype=inference_dtype("auto"))
    base = evaluate_task(
        model,
        tok,
        load_examples(splits["test"])[:TEST_EXAMPLES],
        label="zero-shot",
        max_new_tokens=12,
        latency_samples=0,
    )
    method = SFT(validate_config(run_config(tmp, splits, "probe", TYPES["qlora"])))
    batch = collate_tokens([method.features(e, tok) for e in load_examples(splits["train"])[:32]], tok.pad_token_id)
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        loss = float(method.loss(model.float(), batch)[0]) / batch["n_items"]
    return {"dir": tmp, "splits": splits, "base_exact_match": base["scores"]["exact_match"]["mean"], "base_loss": loss}


def run_config(tmp, splits, name: str, adapter_lr_steps) -> dict:
    adapter, lr, steps = adapter_lr_steps
    return {
        "name": name,
        "model": BUNDLED_ALIAS,
        "adapter": adapter,
        "data": {"train": str(splits["train"]), "max_length": 128},  # no validation split: not needed here
        "train": {
            "max_steps": steps,
            "batch_size": BATCH,
            "lr": lr,
            "schedule": "constant",
            "warmup": 0,
            "seed": 0,
            "log_every": 1,
        },
        "eval": {"test": str(splits["test"]), "limit": TEST_EXAMPLES, "max_new_tokens": 12, "latency_samples": 0},
        "output": {"dir": str(tmp / "runs"), "save_every": None},
    }


@pytest.mark.parametrize("name", list(TYPES))
def test_each_type_lifts_the_task_score_of_the_bundled_model(task, name):
    from tunesmith.run import train

    summary = train(validate_config(run_config(task["dir"], task["splits"], name, TYPES[name])), quiet=True)
    tuned = summary["test"]["scores"]["exact_match"]
    base = task["base_exact_match"]
    # measured on 32 test examples, base 0.00: on a 2-core CPU with native bf16 (bf16 autocast) qlora 0.50,
    # ia3 0.59, prefix 0.62, prompt 0.31, full 0.56; in fp32 with AVX2 kernels qlora 0.50, ia3 0.41,
    # prefix 0.62, prompt 0.25, full 0.47. Asked here: 5 of the 32 more than the base, and the tuned
    # score's 95% interval above the base's score.
    assert tuned["mean"] >= base + 0.15 and tuned["lo"] > base, (name, base, tuned)
    first = read_jsonl(task["dir"] / "runs" / name / "metrics.jsonl")[0]["loss"]
    # the first step's loss is the untuned model's (with its adapter at its initial value): near the
    # base model's loss, not derailed (PEFT's random prefixes gave ~7x)
    assert first < 2 * task["base_loss"], (name, first, task["base_loss"])
    assert json.loads((task["dir"] / "runs" / name / "eval" / "test.json").read_text())["n"] == TEST_EXAMPLES
