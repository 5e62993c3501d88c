"""A run's configuration: the schema (schema.py), reading and validating it (loading.py), and the
registry of methods a config may name (methods.py)."""

from tunesmith.config.loading import apply_override, load_config, set_key, validate_config
from tunesmith.config.methods import METHODS, MethodEntry
from tunesmith.config.schema import (
    ADAPTER_TYPES,
    DEFAULT_MODEL,
    PRECISIONS,
    AdapterConfig,
    DataSource,
    FreezeConfig,
    RewardSpec,
    RunConfig,
    TrainConfig,
    TrainOn,
)

__all__ = [
    "ADAPTER_TYPES",
    "DEFAULT_MODEL",
    "METHODS",
    "PRECISIONS",
    "AdapterConfig",
    "DataSource",
    "FreezeConfig",
    "MethodEntry",
    "RewardSpec",
    "RunConfig",
    "TrainConfig",
    "TrainOn",
    "apply_override",
    "load_config",
    "set_key",
    "validate_config",
]
