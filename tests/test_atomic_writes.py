"""Every file tunesmith writes is whole or absent (docs/architecture.md, "Files"): through `atomic`,
or into `tmp`, a temporary folder renamed whole once written (`atomic.folder`, a checkpoint's).
This walks the source for writes that are neither; the few that must not replace a file (logs
that grow, a lock, an upload hashed as it arrives) are listed here with their reasons."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tunesmith"

# (file under src/tunesmith, function) -> why its write is not through atomic
ALLOWED = {
    (
        "engine/logbook.py",
        "__init__",
    ): "metrics.jsonl and samples.jsonl grow a line a step; readers skip a torn last line",
    ("methods/distill_teachers.py", "sequence_logprobs"): "the endpoint teacher's score cache grows a line a call; "
    "a torn last line is cut when it is read back",
    ("service/executors/local.py", "submit"): "a worker's log, appended to by the worker as it runs",
    ("sweep.py", "_only_sweep"): "a lock file: its content is never read",
    ("model/resolve.py", "conversion_lock"): "a lock file: its content is never read",
}
WRITE_METHODS = {"write_text", "write_bytes", "savefig", "save_pretrained"}


def _mentions_tmp(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "tmp" for n in ast.walk(node))


def _mode(call: ast.Call, position: int) -> str:
    args = [*call.args[position : position + 1], *(k.value for k in call.keywords if k.arg == "mode")]
    return next((a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)), "r")


def _target(call: ast.Call) -> ast.AST | None:
    """What a call writes to, where it is a write: the path expression; None where it reads."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "atomic":
        return None  # the way to write
    if isinstance(f, ast.Attribute) and name in WRITE_METHODS:
        return call.args[0] if name in ("savefig", "save_pretrained") and call.args else f.value
    if isinstance(f, ast.Attribute) and name == "open" and set(_mode(call, 0)) & set("wax+"):
        return f.value  # Path.open(mode)
    if isinstance(f, ast.Name) and name == "open" and set(_mode(call, 1)) & set("wax+"):
        return call.args[0]
    torch_save = (
        isinstance(f, ast.Attribute) and name == "save" and isinstance(f.value, ast.Name) and f.value.id == "torch"
    )
    if (isinstance(f, ast.Name) and name == "save_file" or torch_save) and len(call.args) >= 2:
        return call.args[1]
    return None


def bare_writes(root: Path = SRC, allowed: dict = ALLOWED) -> list[str]:
    """Each write outside `atomic` and `tmp` folders that `allowed` does not list, as file:line."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "atomic.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                target = _target(call)
                if target is None or _mentions_tmp(target) or (rel, fn.name) in allowed:
                    continue
                found.append(f"{rel}:{call.lineno} in {fn.name}: {ast.unparse(call)[:80]}")
    return sorted(set(found))


def test_every_write_in_the_source_is_atomic_or_listed_with_its_reason():
    assert bare_writes() == [], "write through tunesmith.atomic (or into a tmp folder renamed whole)"


def test_each_listed_exception_still_writes():
    listed = bare_writes(allowed={})
    for file, function in ALLOWED:
        assert any(w.startswith(f"{file}:") and f" in {function}:" in w for w in listed), (file, function)


def test_the_walk_finds_each_kind_of_bare_write(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import json\nimport torch\nfrom safetensors.torch import save_file\n"
        "def report(out, fig, model, weights):\n"
        "    (out / 'report.json').write_text('{}')\n"
        "    with open(out / 'log.txt', 'a') as f:\n        f.write('x')\n"
        "    with (out / 'p.jsonl').open('w') as f:\n        f.write('x')\n"
        "    fig.savefig(out / 'plot.png')\n"
        "    save_file(weights, out / 'w.safetensors')\n"
        "    torch.save(weights, out / 'w.pt')\n"
        "def fine(out, tmp, weights):\n"
        "    (tmp / 'x').write_text('inside a folder renamed whole')\n"
        "    save_file(weights, str(tmp / 'w.safetensors'))\n"
        "    open(out / 'read.txt').read()\n"
    )
    found = bare_writes(tmp_path)
    assert [f.split(" in ")[0] for f in found] == [f"bad.py:{n}" for n in (10, 11, 12, 5, 6, 8)], found
