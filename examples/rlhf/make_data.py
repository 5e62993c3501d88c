"""The example's data, generated: the quickstart's date task as SFT splits, preference pairs (the
right ISO date over a plausible wrong reply) and the same prompts for online RL."""

import sys
from pathlib import Path

from tunesmith.tasks.dates import write_preference_splits, write_splits

out = Path(sys.argv[1] if len(sys.argv) > 1 else "work/data")
write_splits(out / "sft", n_train=600, n_val=32, n_test=100)
write_preference_splits(out / "prefs", n_train=400, n_val=64, seed=99)
print(f"data in {out}")
