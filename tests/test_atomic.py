"""Files and folders written whole or not at all (tunesmith.atomic), as exports and students use them."""

from __future__ import annotations

import pytest

from tunesmith import atomic


def test_a_folder_appears_only_when_its_block_ends(tmp_path):
    target = tmp_path / "out" / "student"
    with atomic.folder(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("w")
        assert not target.exists()  # nothing at the target while it is being written
    assert (target / "weights").read_text() == "w"
    assert [p.name for p in target.parent.iterdir()] == ["student"]


def test_an_error_leaves_no_folder_and_an_empty_target_as_it_was(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    with pytest.raises(RuntimeError):
        with atomic.folder(target) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("h")
            raise RuntimeError("killed half-way")
    assert target.is_dir() and not any(target.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_leftover_from_a_killed_write_is_cleared(tmp_path):
    target = tmp_path / "export"
    (tmp_path / ".tmp-export").mkdir()
    (tmp_path / ".tmp-export" / "stale").write_text("s")
    with atomic.folder(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh").write_text("f")
    assert [p.name for p in target.iterdir()] == ["fresh"]


def test_a_replaced_file_is_the_old_one_or_the_new_one_never_half(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(path) as tmp:
            tmp.write_text("half of the n")
            raise RuntimeError("killed half-way")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic.replacing(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # the old file stands until the new one is whole
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
