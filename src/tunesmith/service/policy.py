"""What each tenant may do beyond training on its own files: the operator's `--tenants` file.

```yaml
default:                      # every tenant the file does not name
  python_graders: false       # a reinforcement job's `python` grader: the tenant's code, run sandboxed
  endpoint_graders: false     # a `score_model` grader with a `base_url`: the worker calls that URL
  api_key_envs: []            # variables a grader's `api_key_env` may name (their values reach the worker)
  max_running_jobs: null      # jobs training at once (null: as many as --workers)
  max_stored_mb: null         # the tenant's uploaded files, in MB (null: no limit)
tenants:
  research: {python_graders: true, endpoint_graders: true, api_key_envs: [OPENAI_API_KEY], max_running_jobs: 2}
```

With `--api-keys-file` and no `--tenants`, every tenant has `default`'s values: no code graders,
no endpoint graders, no variables. Without a keys file the one tenant, `local`, is whoever runs
the service on its own machine (it listens on loopback only): it may do all of these, with any
variable, unless a `--tenants` file says otherwise. A job that asks for more than its tenant may
is refused when it is created (400 naming the grader and the setting), before anything runs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config.graders import Multi, PythonGrader, ScoreModel
from tunesmith.config.loading import read_yaml, validate_as
from tunesmith.errors import UserError

ANY_VARIABLE = "*"


class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    python_graders: bool = False
    endpoint_graders: bool = False
    api_key_envs: list[str] = Field(default_factory=list, description=f"variable names ({ANY_VARIABLE!r}: any)")
    max_running_jobs: int | None = Field(None, ge=1)
    max_stored_mb: int | None = Field(None, ge=1)

    def may_read(self, variable: str) -> bool:
        return variable in self.api_key_envs or ANY_VARIABLE in self.api_key_envs


LOCAL_POLICY = TenantPolicy(python_graders=True, endpoint_graders=True, api_key_envs=[ANY_VARIABLE])


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: TenantPolicy = Field(default_factory=TenantPolicy)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)

    def of(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.default)


def read_policies(path: Path, known: set[str]) -> Policies:
    """The `--tenants` file; a tenant it names must be one of `known` (a typo would grant nothing)."""
    tree, lines = read_yaml(path, "--tenants")
    policies = validate_as(Policies, tree, str(path), lines)
    for name in policies.tenants:
        if name not in known:
            line = lines.get(("tenants", name))
            raise UserError(
                f"{path}{f':{line}' if line else ''}: tenant {name!r} has no key "
                f"(tenants: {', '.join(sorted(known)) or 'none'})"
            )
    return policies


def graders_in(grader) -> list:
    """Every grader in a spec, a multi grader's parts included."""
    if isinstance(grader, Multi):
        return [grader] + [g for part in grader.graders.values() for g in graders_in(part)]
    return [grader]


def grader_refusal(grader, policy: TenantPolicy, tenant: str, bases: dict[str, str]) -> str | None:
    """Why `tenant` may not run this grader here (None: it may)."""
    setting = "the operator allows it with {key} for this tenant in the --tenants file"
    for g in graders_in(grader):
        if isinstance(g, PythonGrader) and not policy.python_graders:
            return (
                f"grader {g.name!r} is a python grader (code); tenant {tenant!r} may not run code graders on this "
                f"server ({setting.format(key='python_graders: true')})"
            )
        if isinstance(g, ScoreModel):
            if g.base_url and not policy.endpoint_graders:
                return (
                    f"grader {g.name!r} calls an endpoint ({g.base_url}); tenant {tenant!r} may not use endpoint "
                    f"graders on this server ({setting.format(key='endpoint_graders: true')})"
                )
            if g.api_key_env and not policy.may_read(g.api_key_env):
                return (
                    f"grader {g.name!r}: api_key_env {g.api_key_env!r} is not a variable tenant {tenant!r} may use "
                    f"({setting.format(key='api_key_envs')})"
                )
            if not g.base_url and g.model not in bases:
                return (
                    f"grader {g.name!r}: model {g.model!r} is not a model this server grades with (its base "
                    f"models: {', '.join(bases)}; or an endpoint's base_url)"
                )
    return None


def grader_variables(grader) -> set[str]:
    """The variables a job's graders read their keys from."""
    return {g.api_key_env for g in graders_in(grader) if isinstance(g, ScoreModel) and g.api_key_env}
