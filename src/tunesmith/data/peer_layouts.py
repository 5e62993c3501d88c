"""Data as other fine-tuning tools describe it, turned into tunesmith's layouts record by record.

- LLaMA-Factory's data registry: a source names `dataset_info.json` (or the folder holding it)
  and `dataset: NAME`; the entry's `file_name` (or `hf_hub_url`, read from the local cache),
  `formatting` (alpaca | sharegpt), `ranking`, `columns` and `tags` are applied, so each record
  becomes an alpaca, ShareGPT or preference record as LLaMA-Factory itself would read it.
- Axolotl's `type: chat_template` dataset options: `field_messages`, `message_property_mappings`
  (or the older `message_field_role` / `message_field_content`), `roles` and `roles_to_train`.

Each converter raises ValueError naming what is wrong; the loader adds the record's location.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.data.layouts import TURN_EXTRAS, alpaca_history
from tunesmith.errors import UserError

REGISTRY = "dataset_info.json"
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
TAG_ROLE = {
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}  # LLaMA-Factory tag -> ShareGPT `from`
MEDIA_COLUMNS = ("images", "videos", "audios")
NOT_LOCAL = ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
AXOLOTL_ROLES = {
    "user": ["human", "user"],
    "assistant": ["gpt", "assistant", "model"],
    "system": ["system"],
    "tool": ["tool", "observation", "function"],
}

Convert = Callable[[dict[str, Any]], dict[str, Any]]


def registry_source(path: str, dataset: str) -> tuple[str, str, Convert]:
    """(data file or hub id, split, converter) of the dataset `dataset` in a LLaMA-Factory registry."""
    p = Path(path).expanduser()
    registry = p / REGISTRY if p.is_dir() else p
    if not registry.is_file():
        raise UserError(f"{registry}: no LLaMA-Factory {REGISTRY} here (dataset: {dataset!r} names an entry of one)")
    try:
        entries = json.loads(registry.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{registry}: not readable JSON ({e})") from None
    if not isinstance(entries, dict) or dataset not in entries:
        known = ", ".join(sorted(entries)[:12]) if isinstance(entries, dict) else "none"
        raise UserError(f"{registry}: no dataset {dataset!r} (datasets: {known})")
    entry = entries[dataset]
    where = f"{registry}: dataset {dataset!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not an object")
    if "file_name" in entry:
        source = str(registry.parent / entry["file_name"])
    elif "hf_hub_url" in entry:
        source = entry["hf_hub_url"]
    else:
        given = ", ".join(k for k in NOT_LOCAL if k in entry) or "no file_name"
        raise UserError(
            f"{where}: {given}; tunesmith reads local files (file_name) or cached hub datasets (hf_hub_url)"
        )
    formatting = entry.get("formatting", "alpaca")
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise UserError(f"{where}: columns and tags must be objects")
    if formatting == "alpaca":
        convert = alpaca_converter(columns, bool(entry.get("ranking")))
    elif formatting == "sharegpt":
        convert = sharegpt_converter(columns, tags, bool(entry.get("ranking")))
    else:
        raise UserError(f"{where}: formatting {formatting!r} unknown (LLaMA-Factory's are alpaca and sharegpt)")
    return source, entry.get("split", "train"), convert


def _no_media(record: dict[str, Any], columns: dict[str, Any]) -> None:
    for name in MEDIA_COLUMNS:
        value = record.get(columns.get(name, name))
        if value:
            raise ValueError(f"'{columns.get(name, name)}' holds {name}: tunesmith trains text models only")


def alpaca_converter(columns: dict[str, Any], ranking: bool) -> Convert:
    names = {**ALPACA_COLUMNS, **columns}

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        _no_media(record, columns)
        get = {key: record.get(col) for key, col in names.items() if col in record}
        out = {"instruction": get.get("prompt", ""), "input": get.get("query") or ""}
        for key, to in (("system", "system"), ("history", "history"), ("kto_tag", "label")):
            if get.get(key) is not None:
                out[to] = get[key]
        if not ranking:
            out["output"] = get.get("response")
            return out
        prompt = f"{out['instruction']}\n\n{out['input']}" if str(out["input"]).strip() else out["instruction"]
        history = [{"role": "system", "content": out["system"]}] if out.get("system") else []
        turns = history + alpaca_history(out.get("history")) + [{"role": "user", "content": prompt}]
        return {"messages": turns, "chosen": get.get("chosen"), "rejected": get.get("rejected")}

    return convert


def sharegpt_converter(columns: dict[str, Any], tags: dict[str, Any], ranking: bool) -> Convert:
    tag = {**SHAREGPT_TAGS, **tags}
    roles = {tag[k]: role for k, role in TAG_ROLE.items()}
    field = columns.get("messages", "conversations")

    def turn(t: Any, where: str) -> dict[str, Any]:
        if not isinstance(t, dict):
            raise ValueError(f"{where} is not an object")
        role = t.get(tag["role_tag"])
        if role not in roles:
            raise ValueError(
                f"{where}.{tag['role_tag']} {role!r} is none of this dataset's tags ({', '.join(map(str, roles))})"
            )
        out = {"from": roles[role], "value": t.get(tag["content_tag"])}
        out.update({key: t[key] for key in TURN_EXTRAS if key in t})
        return out

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        _no_media(record, columns)
        turns = record.get(field)
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"'{field}' must be a non-empty list of turns")
        out: dict[str, Any] = {"conversations": [turn(t, f"{field}[{i}]") for i, t in enumerate(turns)]}
        system = record.get(columns.get("system", "system"))
        if isinstance(system, str) and system.strip() and out["conversations"][0]["from"] != "system":
            out["conversations"].insert(0, {"from": "system", "value": system})
        if record.get(columns.get("tools", "tools")) not in (None, ""):
            out["tools"] = record[columns.get("tools", "tools")]
        if columns.get("kto_tag", "kto_tag") in record:
            out["label"] = record[columns.get("kto_tag", "kto_tag")]
        if ranking:
            for side in ("chosen", "rejected"):
                value = record.get(columns.get(side, side))
                out[side] = turn(value, side) if isinstance(value, dict) else value
        return out

    return convert


def role_table(roles: dict[str, list[str]] | None) -> dict[str, str]:
    """Axolotl's `roles` (role -> the source's names for it) as source name -> role, each role
    also standing for itself."""
    roles = roles or AXOLOTL_ROLES
    return {**{raw: std for std, raws in roles.items() for raw in raws}, **{std: std for std in roles}}


def axolotl_converter(field_messages: str, mappings: dict[str, str], roles: dict[str, list[str]] | None) -> Convert:
    """Axolotl's `chat_template` dataset: messages under `field_messages`, each message's role and
    content under the property names `mappings` gives, source roles mapped by `roles`."""
    role_key, content_key = mappings.get("role", "role"), mappings.get("content", "content")
    table = role_table(roles)
    extra = {k: v for k, v in mappings.items() if k not in ("role", "content")}

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        turns = record.get(field_messages)
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"'{field_messages}' (field_messages) must be a non-empty list of messages")
        messages = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict):
                raise ValueError(f"{field_messages}[{i}] is not an object")
            raw = t.get(role_key)
            if raw not in table:
                raise ValueError(
                    f"{field_messages}[{i}].{role_key} {raw!r} is mapped to no role "
                    f"(roles: {', '.join(sorted(map(str, table)))})"
                )
            m = {"role": table[raw], "content": t.get(content_key)}
            for ours, theirs in extra.items():
                if theirs in t:
                    m[ours] = t[theirs]
            messages.append(m)
        out = {k: v for k, v in record.items() if k != field_messages}
        out["messages"] = messages
        return out

    return convert


def check_roles_to_train(roles_to_train: list[str], roles: dict[str, list[str]] | None) -> None:
    """tunesmith trains assistant turns: `roles_to_train` must name the assistant role (by its
    own name or a source name mapped to it) and nothing else."""
    table = role_table(roles)
    mapped = {table.get(r, r) for r in roles_to_train}
    if mapped != {"assistant"}:
        others = ", ".join(sorted(mapped - {"assistant"})) or "none"
        raise ValueError(
            f"roles_to_train {roles_to_train}: tunesmith trains the assistant's turns (other roles: "
            f"{others}); use data.train_on: all to train every token"
        )
