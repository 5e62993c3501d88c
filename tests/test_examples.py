"""The example configs stay valid as the config schema moves (running them is minutes: see examples/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_config_is_valid(config):
    cfg = load_config(config)
    assert cfg.output.dir.startswith("work/")  # everything an example writes stays under its work/ folder
