"""One TRL training run for the speed benchmark, in TRL's own environment (bench/.venv-trl).

    bench/.venv-trl/bin/python bench/trl_run.py SPEC_JSON

SPEC: {"kind": "sft"|"dpo"|"grpo", "adapter": "lora"|"full", "model", "data", "out", "batch_size",
"lr", "max_length", "seed", "options": {extra SFTConfig/DPOConfig/GRPOConfig fields, and
"base_dtype": "bf16" to load the frozen base in bf16}, "grpo": {group_size, max_new_tokens,
target_length, beta}}. Prints one JSON line: real tokens (non-padding, counted from the tokenized
training set; GRPO: prompt and reply tokens of every sampled reply), training seconds (TRL's
train_runtime; GRPO also the time spent sampling and scoring), peak RSS of this process, TRL's
mean training loss and steps, and the versions of the libraries that ran.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from importlib import metadata


def length_penalty(target: int):
    """tunesmith's built-in `length_penalty` reward, as a TRL reward function."""

    def reward(completions, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [-max(0, len(t.strip()) - target) / target for t in texts]

    return reward


def main(spec: dict) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    options = dict(spec.get("options", {}))
    dtype = torch.bfloat16 if options.pop("base_dtype", None) == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    data = load_dataset("json", data_files=spec["data"], split="train")
    peft_config = None
    if spec["adapter"] == "lora":
        peft_config = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    common = dict(
        output_dir=spec["out"],
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["lr"],
        num_train_epochs=1,
        seed=spec["seed"],
        data_seed=spec["seed"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if spec["kind"] != "grpo":
        common["max_length"] = spec["max_length"]
    common.update(options)
    rollout = {"seconds": 0.0, "tokens": 0, "generated": 0}
    if spec["kind"] == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    elif spec["kind"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(beta=0.1, **common),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        ds = trainer.train_dataset
        tokens = sum(
            2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
        )
    else:
        from trl import GRPOConfig, GRPOTrainer

        g = spec["grpo"]
        args = GRPOConfig(
            num_generations=g["group_size"],
            max_completion_length=g["max_new_tokens"],
            beta=g["beta"],
            temperature=1.0,
            top_p=1.0,
            loss_type="grpo",
            **common,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=length_penalty(g["target_length"]),
            args=args,
            train_dataset=data.remove_columns([c for c in data.column_names if c != "prompt"]),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        sample = trainer._generate_and_score_completions

        def timed(batch):  # sampling, rewards and reference log-probs, as tunesmith's rollout
            t = time.perf_counter()
            out = sample(batch)
            rollout["seconds"] += time.perf_counter() - t
            rollout["generated"] += int(out["completion_mask"].sum())
            rollout["tokens"] += int(out["completion_mask"].sum() + out["prompt_mask"].sum())
            return out

        trainer._generate_and_score_completions = timed
        tokens = None
    setup_s = time.perf_counter() - t0
    metrics = trainer.train().metrics
    trainer.save_model(spec["out"] + "/final")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    row = {
        "tool": "trl",
        "tokens": tokens if tokens is not None else rollout["tokens"],
        "examples": len(data),
        "train_seconds": metrics["train_runtime"],
        "setup_seconds": round(setup_s, 1),
        "steps": trainer.state.global_step,
        "train_loss": metrics["train_loss"],
        "last_loss": losses[-1] if losses else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final": spec["out"] + "/final",
        **({"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}),
        "versions": {p: metadata.version(p) for p in ("trl", "transformers", "peft", "torch", "accelerate")},
    }
    if spec["kind"] == "grpo":
        row["rollout"] = rollout
    return row


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
