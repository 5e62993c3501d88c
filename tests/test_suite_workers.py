"""The suite's own scheduling: `make test` runs pytest-xdist workers with `--dist loadgroup`, and
a module marked `xdist_group` (the Slurm and Ray clusters, llama-cpp-python's one build per machine)
must run on one worker. pytest 9.2 reads a test's id from a field that pytest-xdist 3.8's loadgroup
does not rewrite, so there the groups are split across workers: pyproject.toml keeps pytest below it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_marked_group_runs_on_one_worker(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_grouped.py").write_text(
        textwrap.dedent(
            """
            import os
            from pathlib import Path

            import pytest

            pytestmark = pytest.mark.xdist_group("one")


            @pytest.mark.parametrize("i", range(8))
            def test_records_its_worker(i):
                with open(Path(__file__).with_name("workers.txt"), "a") as f:
                    f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 8
    assert len(set(workers)) == 1, f"the group ran on {sorted(set(workers))}"
