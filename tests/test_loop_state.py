"""The loop's state round-trips through a checkpoint's JSON, including the state an older
checkpoint stored (before `skipped` and `early_stop` were always written)."""

from __future__ import annotations

import json
import math

from tunesmith.engine.loop_state import LoopState, StepTotals, Window


def test_the_state_survives_a_checkpoint_exactly():
    state = LoopState(
        step=7,
        epoch=1,
        batch=3,
        tokens=900,
        elapsed=12.5,
        skipped=1,
        early_stop={"best": 0.5, "best_step": 4, "waited": 1},
    )
    state.window.add(StepTotals(2.0, 10, 100, {"kl": 0.25}, 1.5, False))
    again = LoopState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state and isinstance(again.window, Window)


def test_an_older_checkpoints_state_loads_with_defaults_for_what_it_lacks():
    saved = {
        "step": 3,
        "epoch": 0,
        "batch": 3,
        "tokens": 120,
        "elapsed": 1.0,
        "window": {"loss": 4.0, "items": 8, "tokens": 40, "steps": 2, "grad_norm": 3.0, "metrics": {}},
    }
    state = LoopState.from_json(saved)
    assert (state.step, state.skipped, state.early_stop, state.window.steps) == (3, 0, None, 2)


def test_a_record_is_the_windows_means_per_item():
    state = LoopState(step=2, epoch=0, batch=1, tokens=50)
    state.window.add(StepTotals(6.0, 3, 30, {"accuracy": 3.0}, 2.0, False))
    state.window.add(StepTotals(2.0, 1, 20, {"accuracy": 0.0}, 4.0, False))
    r = state.record(batches_per_epoch=4, lr=1e-3, window_s=2.0, elapsed_s=5.0)
    assert (r["loss"], r["grad_norm"], r["tokens_per_s"], r["accuracy"], r["epoch"]) == (2.0, 3.0, 25.0, 0.75, 0.25)
    assert "skipped_steps" not in r
    empty = LoopState(step=1, skipped=1).record(1, 1e-3, 1.0, 1.0)
    assert math.isnan(empty["loss"]) and empty["skipped_steps"] == 1
