"""One TRL training run for the speed benchmark, in TRL's own environment (bench/.venv-trl).

    bench/.venv-trl/bin/python bench/trl_run.py SPEC_JSON

SPEC: {"kind": "sft"|"dpo", "adapter": "lora"|"full", "model", "data", "out", "batch_size",
"lr", "max_length", "seed", "options": {extra SFTConfig/DPOConfig fields}}. Prints one JSON line:
real tokens (non-padding, counted from the tokenized training set), training seconds (TRL's
train_runtime), peak RSS of this process, TRL's mean training loss and steps.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(spec: dict) -> dict:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    data = load_dataset("json", data_files=spec["data"], split="train")
    peft_config = None
    if spec["adapter"] == "lora":
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"],
                  num_train_epochs=1, max_length=spec["max_length"], seed=spec["seed"], lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, save_strategy="no", report_to="none",
                  logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    common.update(spec.get("options", {}))
    if spec["kind"] == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=data, processing_class=tokenizer,
                             peft_config=peft_config)
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(beta=0.1, **common), train_dataset=data,
                             processing_class=tokenizer, peft_config=peft_config)
        ds = trainer.train_dataset
        tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in
                     zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    setup_s = time.perf_counter() - t0
    metrics = trainer.train().metrics
    trainer.save_model(spec["out"] + "/final")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "tool": "trl", "tokens": tokens, "examples": len(data), "train_seconds": metrics["train_runtime"],
        "setup_seconds": round(setup_s, 1), "steps": trainer.state.global_step, "train_loss": metrics["train_loss"],
        "last_loss": losses[-1] if losses else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "final": spec["out"] + "/final",
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
