"""The measured tables of README and the manual are rendered from committed results files, and a hand
edit is caught."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import readme_tables  # noqa: E402

PAGES = {
    readme_tables.README: {"quickstart", "quickstart-gemma", "distill"},
    readme_tables.BENCH_README: {"bench"},
    readme_tables.DOCS / "adapters.md": {"adapters"},
    readme_tables.DOCS / "benchmarks.md": {"bench"},
    readme_tables.DOCS / "distillation.md": {"distill"},
    readme_tables.DOCS / "methods.md": {"rlhf"},
}


def test_the_pages_with_tables_are_among_the_documents_rendered():
    assert set(PAGES) <= set(readme_tables.documents())


@pytest.mark.parametrize("readme", readme_tables.documents(), ids=lambda p: str(p.relative_to(readme_tables.ROOT)))
def test_every_generated_table_equals_what_its_results_file_gives(readme):
    blocks = PAGES.get(readme, set())
    text = readme.read_text()
    names = [m["name"] for m in readme_tables.BLOCK.finditer(text)]
    assert blocks <= set(names), names
    for m in readme_tables.BLOCK.finditer(text):
        assert list(readme_tables.ROOT.glob(m["source"])), f"{m['name']}: no file {m['source']}"
    assert readme_tables.regenerate(text) == text, (
        f"{readme.name} differs from its results files: run make results-table"
    )


@pytest.mark.parametrize("readme", sorted(PAGES), ids=lambda p: str(p.relative_to(readme_tables.ROOT)))
def test_a_number_changed_by_one_unit_anywhere_in_a_generated_table_fails_the_check(readme):
    text = readme.read_text()
    digits = [
        m.start("body") + d.start() for m in readme_tables.BLOCK.finditer(text) for d in re.finditer(r"\d", m["body"])
    ]
    assert len(digits) > 50
    rendered = {m["name"]: m.group(0) for m in readme_tables.BLOCK.finditer(readme_tables.regenerate(text))}
    for pos in digits:
        bumped = text[:pos] + str((int(text[pos]) + 1) % 10) + text[pos + 1 :]
        block = next(m for m in readme_tables.BLOCK.finditer(bumped) if m.start("body") <= pos < m.end("body"))
        assert block.group(0) != rendered[block["name"]], f"a changed digit at {pos} went unnoticed"


def test_check_mode_exits_1_and_names_the_block(tmp_path, monkeypatch, capsys):
    text = readme_tables.README.read_text()
    m = next(m for m in readme_tables.BLOCK.finditer(text) if m["name"] == "quickstart")
    copy = tmp_path / "README.md"
    copy.write_text(text[: m.start("body")] + m["body"].replace(" ms", " s", 1) + text[m.end("body") :])
    monkeypatch.setattr(readme_tables, "README", copy)
    assert readme_tables.main(["--check"]) == 1
    assert "quickstart" in capsys.readouterr().err
    copy.write_text(text)
    assert readme_tables.main(["--check"]) == 0


@pytest.mark.parametrize("missing", ["provenance", "tables"])
def test_record_refuses_a_run_without_provenance_or_tables(tmp_path, missing):
    import json

    run = {
        "provenance": {"commit": "abc", "machine_tag": "avx512-bf16"},
        "tables": {},
        "phases": [],
        "total_minutes": 1.0,
        "model": "m",
        "task": "t",
    }
    run.pop(missing)
    (tmp_path / "quickstart.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match=f"no '{missing}'"):
        readme_tables.record_quickstart(tmp_path)
