"""What is optimized. Each method is a small object with one face (see base.Method)."""

from tunesmith.methods.base import Method
from tunesmith.methods.distill import Distillation
from tunesmith.methods.dpo import Preference
from tunesmith.methods.grpo import GroupPolicyOptimisation
from tunesmith.methods.reward import RewardModelling
from tunesmith.methods.sft import SFT

METHODS: dict[str, type] = {"sft": SFT, "dpo": Preference, "reward": RewardModelling,
                            "grpo": GroupPolicyOptimisation, "rloo": GroupPolicyOptimisation, "distill": Distillation}


def build_method(name: str, config) -> Method:
    return METHODS[name](config)
