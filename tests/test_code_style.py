"""The tree is clean under ruff (lint, import order, format; pyproject.toml's [tool.ruff]), as
`make test` checks it; a file with a deliberate violation of each kind shows the checks can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")
TREES = ["src", "tests", "bench", "tools"]


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [str(RUFF), *args, "--config", str(ROOT / "pyproject.toml")]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_tree_passes_ruffs_lint_and_import_order():
    result = ruff("check", "--no-cache", *TREES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_the_tree_is_formatted():
    result = ruff("format", "--check", "--no-cache", *TREES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_each_check_fails_on_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\n\ndef f(x):\n    return x  # " + "long " * 30 + "\n")
    lint = ruff("check", "--no-cache", str(bad), cwd=tmp_path)
    assert lint.returncode != 0 and all(code in lint.stdout for code in ("I001", "F401", "E501")), lint.stdout
    (tmp_path / "unformatted.py").write_text("x = {  'a':1 }\n")
    assert ruff("format", "--check", "--no-cache", str(tmp_path / "unformatted.py"), cwd=tmp_path).returncode != 0


LONGEST_FUNCTION = 80  # lines, decorators and docstring included


def functions_over(limit: int, root: Path = ROOT / "src" / "tunesmith") -> list[str]:
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_src_is_over_80_lines():
    assert functions_over(LONGEST_FUNCTION) == []
    assert functions_over(LONGEST_FUNCTION - 10), "the walk finds the longest functions"  # it can fail


MYPY = Path(sys.executable).with_name("mypy")


def mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [str(MYPY), "--config-file", str(ROOT / "pyproject.toml"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


def test_the_tree_passes_mypy():
    """Strict on engine/, methods/, config/ and data/; every other layer checked, function bodies
    included (pyproject.toml's [tool.mypy])."""
    result = mypy()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]


def test_mypy_fails_on_a_violation_strict_or_checked(tmp_path):
    for package in ("tunesmith", "tunesmith/engine", "tunesmith/report"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    # strict layers: an unannotated function is an error; elsewhere it is checked inside, not refused
    (tmp_path / "tunesmith/engine/loose.py").write_text("def scale(x, by):\n    return x * by\n")
    (tmp_path / "tunesmith/report/loose.py").write_text("def scale(x, by):\n    return x * by\n")
    (tmp_path / "tunesmith/report/wrong.py").write_text(
        "def first(rows):\n    found: int = 'a'\n    return rows[0]\n"  # a wrong type in an unannotated body
    )
    result = mypy("--cache-dir", str(tmp_path / "cache"), "tunesmith", cwd=tmp_path)
    out = result.stdout
    assert result.returncode != 0, out
    assert "tunesmith/engine/loose.py:1: error: Function is missing a type annotation" in out, out
    assert "tunesmith/report/loose.py" not in out, out
    assert "tunesmith/report/wrong.py:2: error: Incompatible types in assignment" in out, out
