"""Reading a run config: YAML from a file, `--set key=value` overrides, validation against the
schema, and every problem as one line that names the key, the file:line and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tunesmith.config.schema import RunConfig
from tunesmith.errors import UserError, where

Model = TypeVar("Model", bound=BaseModel)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` to a nested dict; the value is parsed as YAML (so 3, 1e-4, true, [1,2])."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    set_key(tree, key.strip(), value, f"--set {key}")


def set_key(tree: dict[str, Any], key: str, value: Any, context: str) -> None:
    """Set a dotted key (`train.lr`, `data.train.0.weight`) in a nested dict, creating sections."""
    parts = key.split(".")
    if not all(parts):
        raise UserError(f"{context}: empty key part in {key!r}")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{context}: '{part}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{context}: '{'.'.join(parts[:i])}' is not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _yaml_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (k.value,)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section class inside an annotation such as `AdapterConfig` or `list[DataSource]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[Any, ...], root: type[BaseModel] = RunConfig) -> list[str]:
    """The keys allowed in the section that `loc` (a pydantic error location) points into."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an index into a list of sections
        field = model.model_fields.get(part) if model else None
        model = _section_model(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _describe(
    err: ErrorDetails, source: str, lines: dict[tuple[Any, ...], int], root: type[BaseModel] = RunConfig
) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = None
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    prefix = where(source, line)
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc, root))
        return f"{prefix}: unknown key '{key}' (allowed here: {allowed})"
    if err["type"] == "missing":
        return f"{prefix}: missing required key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], (dict, list)) and err["type"] != "value_error":
        return f"{prefix}: {key}: {msg} (got {err['input']!r})"
    return f"{prefix}: {key}: {msg}"


def read_yaml(path: str | Path, what: str = "config") -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """A YAML mapping from a file and the line of each key (UserError with file:line otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"{where(path, line)}: not UTF-8 text (byte {e.start})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where(path, at)}: invalid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: the {what} must be a mapping of keys to values")
    return tree, _yaml_lines(text)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config. Raises UserError with file:line on any problem."""
    tree, lines = read_yaml(path)
    for assignment in overrides or []:
        apply_override(tree, assignment)
    return validate_config(tree, str(path), lines)


def validate_config(
    tree: dict[str, Any], source: str = "config", lines: dict[tuple[Any, ...], int] | None = None
) -> RunConfig:
    return validate_as(RunConfig, tree, source, lines)


def validate_as(
    model: type[Model], tree: dict[str, Any], source: str, lines: dict[tuple[Any, ...], int] | None = None
) -> Model:
    """`tree` as `model`, or one UserError naming the first problem's key and file:line."""
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        errs = e.errors()
        first = _describe(errs[0], source, lines or {}, model)
        more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
        raise UserError(first + more) from None
