"""Where the service's jobs run: the operator's `--cluster` file (none: on this machine).

```yaml
executor: slurm                 # local | slurm | ray
python: /shared/venv/bin/python # tunesmith's interpreter on the nodes (default: the service's own)
slurm:                          # every job's placement (sbatch options)
  partition: gpu
  gpus_per_node: 1
  time: "08:00:00"
models:                         # per base model (the name jobs give as `model`), over `slurm:`
  SmolLM2-135M-Instruct: {partition: small, gpus_per_node: 0}
tenants:                        # per tenant, over the model's and the defaults
  research: {account: research}
```

For `executor: ray`, `address:` is the cluster's job server (`http://HEAD:8265`) and the
placement section is `ray:` (`num_cpus`, `num_gpus`, `memory_mb`, `resources`). The service's
`--home` must be on a filesystem every node sees at the same path: jobs read their config and
data there and write their runs there, where the service follows them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config.loading import read_yaml, validate_as
from tunesmith.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlurmPlacement(Strict):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1)
    tasks_per_node: int = Field(1, ge=1, description="training processes per node (more than one in all: DDP/FSDP)")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = Field(None, description="per node, as sbatch --mem takes it (e.g. 64G)")
    time: str | None = Field(None, description="time limit, as sbatch --time takes it (e.g. 08:00:00)")
    signal_s: int = Field(120, ge=5, description="SIGTERM this long before the time limit: checkpoint, requeue")
    extra: list[str] = Field(default_factory=list, description="more sbatch options, each as on its command line")


class RayPlacement(Strict):
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    memory_mb: int | None = Field(None, ge=1)
    resources: dict[str, float] = Field(default_factory=dict)
    stop_wait_s: int = Field(
        120, ge=1, description="after SIGTERM, how long Ray waits for the checkpoint before SIGKILL"
    )


class ClusterConfig(Strict):
    executor: Literal["local", "slurm", "ray"] = "local"
    python: str = Field(default_factory=lambda: sys.executable)
    address: str | None = Field(None, description="ray: the job server, http://HEAD:8265")
    slurm: SlurmPlacement = Field(default_factory=SlurmPlacement)
    ray: RayPlacement = Field(default_factory=RayPlacement)
    models: dict[str, dict] = Field(default_factory=dict)
    tenants: dict[str, dict] = Field(default_factory=dict)

    def placement(self, model: str, tenant: str):
        """This executor's placement for a job: the defaults, then the model's, then the tenant's."""
        section = self.slurm if self.executor == "slurm" else self.ray
        tree = section.model_dump()
        tree.update(self.models.get(model, {}))
        tree.update(self.tenants.get(tenant, {}))
        return type(section).model_validate(tree)


LOCAL = ClusterConfig()


def read_cluster(path: Path, models: set[str], tenants: set[str]) -> ClusterConfig:
    """The `--cluster` file, every override checked now (a typo would otherwise fail jobs later)."""
    tree, lines = read_yaml(path, "--cluster")
    config = validate_as(ClusterConfig, tree, str(path), lines)
    if config.executor == "ray" and not config.address:
        raise UserError(f"{path}: executor ray needs address: (the cluster's job server, e.g. http://HEAD:8265)")
    if config.executor != "ray" and config.address:
        raise UserError(
            f"{path}:{lines.get(('address',), '?')}: address is for executor ray (this file says {config.executor})"
        )
    if config.executor == "local" and (config.models or config.tenants):
        raise UserError(f"{path}: models: and tenants: place jobs on a cluster (executor slurm or ray)")
    defaults = config.slurm if config.executor == "slurm" else config.ray
    for kind, names, known in (("models", config.models, models), ("tenants", config.tenants, tenants)):
        for name, override in names.items():
            line = lines.get((kind, name))
            at = f"{path}{f':{line}' if line else ''}"
            if name not in known:
                raise UserError(
                    f"{at}: {kind[:-1]} {name!r} is not one of this service's ({', '.join(sorted(known)) or 'none'})"
                )
            validate_as(type(defaults), {**defaults.model_dump(), **override}, f"{at} ({kind}.{name})", {})
    return config
