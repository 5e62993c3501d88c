"""The local folders tinker-cookbook's minimal recipes read, so they run unmodified and offline.

    python prepare.py WORKDIR COOKBOOK_DIR

The recipes name a model and two datasets by their hub ids; with the hub offline, transformers and
datasets read a local folder of the same relative path instead. WORKDIR/recipes (the recipes'
working directory) gets:
- `Qwen/Qwen3-4B-Instruct-2507/`: the bundled model's tokenizer. The recipes pick their chat
  renderer by model name from the cookbook's table, which has no SmolLM2; this name's renderer
  (`qwen3_instruct`, ChatML with `<|im_start|>`/`<|im_end|>`) is the format SmolLM2-Instruct was
  tuned on. The service serves the bundled model under this name (`--model ID=REFERENCE`).
- `HuggingFaceH4/no_robots/train.jsonl`: the cookbook's own example_data/conversations.jsonl (for
  `sl_loop`, which loads no_robots' train split).
- `openai/gsm8k/` with a `main` config: the quickstart's date task as question/answer rows (for
  `rl_loop`, which loads GSM8K and rewards an answer in `\\boxed{}` equal to the text after `####`).
  The recipe's grader compares answers as math, so `1987-06-03` equals `1987-05-04` (both are
  1978); the date is asked for as the number YYYYMMDD, which it compares exactly.

WORKDIR/warmup gets the same tokenizer and, as `no_robots`, date-task conversations answered in
the RL recipe's format (`\\boxed{YYYYMMDD}`, other sentences than the RL rows): the bundled 135M
model never writes `\\boxed{}` on its own, so every RL group would score 0 and `rl_loop` would skip
every step; `sl_loop` on these first gives RL something to improve.
"""

import json
import random
import shutil
import sys
from pathlib import Path

from tunesmith.model.embedded import DEFAULT_ALIAS
from tunesmith.model.resolve import resolve
from tunesmith.tasks.dates import make_example

MODEL_NAME = "Qwen/Qwen3-4B-Instruct-2507"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "config.json", "generation_config.json"]
RL_INSTRUCTION = "Extract the date from the text and write it as the number YYYYMMDD."
RL_SUFFIX = " Provide a numerical answer without units, written inside \\boxed{}."  # what rl_loop appends


def tokenizer_folder(work: Path) -> None:
    source, target = resolve(DEFAULT_ALIAS).path, work / MODEL_NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)


def no_robots(work: Path, cookbook: Path) -> None:
    target = work / "HuggingFaceH4" / "no_robots"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(cookbook / "example_data" / "conversations.jsonl", target / "train.jsonl")


def date_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(question, the date as YYYYMMDD) pairs of the quickstart's date task."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        user, reply = make_example(rng)["messages"]
        text = user["content"].split("Text: ", 1)[1]
        rows.append((f"{RL_INSTRUCTION}\n\nText: {text}", reply["content"].replace("-", "")))
    return rows


def gsm8k_dates(work: Path, n: int = 512, seed: int = 1234) -> None:
    target = work / "openai" / "gsm8k"
    (target / "main").mkdir(parents=True, exist_ok=True)
    with open(target / "main" / "train.jsonl", "w") as f:
        for question, number in date_rows(n, seed):
            f.write(json.dumps({"question": question, "answer": f"The date as a number.\n#### {number}"}) + "\n")
    (target / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n"
                                      "    path: main/train.jsonl\n---\nThe quickstart's date task, GSM8K's columns.\n")


def warmup_dates(work: Path, n: int = 480, seed: int = 4321) -> None:
    target = work / "HuggingFaceH4" / "no_robots"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "train.jsonl", "w") as f:
        for question, number in date_rows(n, seed):
            f.write(json.dumps({"messages": [{"role": "user", "content": question + RL_SUFFIX},
                                             {"role": "assistant", "content": f"\\boxed{{{number}}}"}]}) + "\n")


if __name__ == "__main__":
    work, cookbook = Path(sys.argv[1]), Path(sys.argv[2])
    for folder in ("recipes", "warmup"):
        tokenizer_folder(work / folder)
    no_robots(work / "recipes", cookbook)
    gsm8k_dates(work / "recipes")
    warmup_dates(work / "warmup")
    print(f"{work}: recipes/ (tokenizer, no_robots = conversations.jsonl, gsm8k = date task), warmup/ (date SFT)")
