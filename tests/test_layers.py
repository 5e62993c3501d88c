"""The layering of src/tunesmith (pyproject.toml's import-linter contracts, docs/architecture.md)
holds: no module imports from a layer above its own, and no import circles.

The contracts are checked by import-linter itself; a copy of the package with one deliberate
upward import shows that the check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}  # the package under src/, ahead of the installed one
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(cwd / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_import_runs_downward():
    result = lint(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    shutil.copytree(
        ROOT / "src" / "tunesmith", tmp_path / "src" / "tunesmith", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    loop = tmp_path / "src" / "tunesmith" / "engine" / "loop.py"
    loop.write_text(loop.read_text() + "\n\ndef _upward():\n    from tunesmith.run import train  # noqa: F401\n")
    result = lint(tmp_path / "src", tmp_path)
    assert result.returncode != 0
    assert "tunesmith.engine.loop -> tunesmith.run" in result.stdout, result.stdout[-3000:]


def import_circles(graph) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (strongly connected
    components of the import graph, Tarjan's algorithm), counting imports inside functions too."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_through_others():
    assert import_circles(grimp.build_graph("tunesmith", cache_dir=None)) == []


def test_the_circle_finder_finds_a_circle(tmp_path):
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circled import b\n")
    (package / "b.py").write_text("def f():\n    from circled import c\n")
    (package / "c.py").write_text("import circled.a\n")
    (package / "d.py").write_text("import circled.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("circled", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert import_circles(graph) == [["circled.a", "circled.b", "circled.c"]]
