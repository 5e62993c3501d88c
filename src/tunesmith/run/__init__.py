"""A training run, from a validated config to a run directory with its model, measurements and
report (`train`); the helpers `compare` and the CLI share with it."""

from tunesmith.run.build import build_model
from tunesmith.run.inputs import train_sources, validate_inputs
from tunesmith.run.job import train

__all__ = ["build_model", "train", "train_sources", "validate_inputs"]
