"""The registry of training methods: the names a run config may give as `method`.

One line per method: its name, the class that implements it (`module:Class`, imported only when
a run builds it, so the config layer stays below the methods it names) and a one-line summary for
help texts. Config validation, `tunesmith train --help` and `methods.build_method` all read this
table; a new method is one file under methods/ plus one line here.
"""

from __future__ import annotations

from typing import NamedTuple


class MethodEntry(NamedTuple):
    implementation: str  # "package.module:Class", a subclass of tunesmith.engine.method.Method
    summary: str


METHODS: dict[str, MethodEntry] = {
    "sft": MethodEntry("tunesmith.methods.sft:SFT", "supervised fine-tuning: next-token loss on the replies"),
    "dpo": MethodEntry(
        "tunesmith.methods.preference:PreferenceOptimisation",
        "preference optimisation on chosen/rejected pairs (DPO, IPO, hinge, SimPO, ORPO, KTO)",
    ),
    "reward": MethodEntry(
        "tunesmith.methods.reward_model:RewardModelling", "a reward model: a scalar score learned from preference pairs"
    ),
    "grpo": MethodEntry(
        "tunesmith.methods.grpo:GRPO", "online RL: groups of sampled replies, advantages normalised within each group"
    ),
    "rloo": MethodEntry(
        "tunesmith.methods.grpo:RLOO", "online RL: groups of sampled replies, each against the mean of the others"
    ),
    "distill": MethodEntry(
        "tunesmith.methods.distill:Distillation",
        "knowledge distillation: the student learns a teacher's next-token distributions",
    ),
}
