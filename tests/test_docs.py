"""The manual in docs/ builds with MkDocs in strict mode (a broken link or anchor, or a page left
out of the nav, is an error), and the README's links into it resolve."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(root / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_manual_builds_without_a_warning(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


@pytest.mark.parametrize("break_it", ["a link to a missing page", "a missing anchor", "a page left out of the nav"])
def test_a_broken_manual_fails_the_build(tmp_path, break_it):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "methods.md"
    if break_it == "a link to a missing page":
        page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    elif break_it == "a missing anchor":
        page.write_text(page.read_text() + "\nSee [the layers](architecture.md#no-such-heading).\n")
    else:
        (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0, f"{break_it} went unnoticed"


def test_every_readme_link_into_the_manual_resolves():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10, links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing
