"""One supervised step through the Tinker API against the same step inside the engine, side by side.

    .venv/bin/python bench/tinker_step.py [--repeats 3] [--batch 8] [--rank 16]

The bundled model with a LoRA adapter, a batch of the quickstart's date conversations encoded for
SFT. "tinker": the unmodified `tinker` client against a live `tunesmith service` on this machine
(forward_backward + optim_step, waiting for both results: the HTTP round trips, protobuf, the
futures' polling and the service's queue included). "engine": the same two calls on a
`ClientLoopModel` in this process, which are `tunesmith train`'s own step functions (`backward`,
`update`). Steps alternate between the two, after one warm-up step each; medians of --repeats.
Writes bench/results/tinker-step-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine, machine_tag, provenance

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
KEY = "tml-bench-key-0123456789"
ADAM = {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def encoded_batch(n: int) -> list[tuple[list[int], list[int], list[float]]]:
    """(model input, targets, weights) of n date conversations, weights averaging over trained tokens."""
    from tunesmith.data.chat import IGNORE, encode_example
    from tunesmith.data.records import load_examples
    from tunesmith.model.load import load_tokenizer, tokenizer_dir
    from tunesmith.model.resolve import resolve
    from tunesmith.tasks.dates import write_splits

    with tempfile.TemporaryDirectory() as tmp:
        splits = write_splits(Path(tmp), n_train=n, n_val=2, n_test=2, seed=0)
        examples = load_examples(str(splits["train"]))[:n]
    tokenizer = load_tokenizer(tokenizer_dir(resolve(MODEL)))
    encoded = [encode_example(tokenizer, e, 512, "all_assistant", True) for e in examples]
    trained = sum(sum(x != IGNORE for x in enc.labels[1:]) for enc in encoded)
    return [
        (enc.input_ids[:-1], enc.input_ids[1:], [(x != IGNORE) / trained for x in enc.labels[1:]]) for enc in encoded
    ]


def start_service(home: Path) -> tuple[subprocess.Popen, str]:
    keys = home.parent / "keys.txt"
    keys.write_text(f"{KEY} bench\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "service",
            "--port",
            "0",
            "--home",
            str(home),
            "--model",
            MODEL,
            "--api-keys-file",
            str(keys),
            "--probe-limit",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline()
    if " at " not in line:
        proc.kill()
        raise RuntimeError(f"the service did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0].removesuffix("/v1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    import numpy as np
    import tinker
    from tinker import types

    from tunesmith.methods.client_loss import Datum
    from tunesmith.run.client_loop import ClientLoopModel, ModelSpec

    batch = encoded_batch(args.batch)
    datums = [
        types.Datum(
            model_input=types.ModelInput.from_ints(x),
            loss_fn_inputs={"target_tokens": np.array(t, dtype=np.int64), "weights": np.array(w, dtype=np.float32)},
        )
        for x, t, w in batch
    ]
    local_data = [
        Datum(x, {"target_tokens": np.array(t, dtype=np.int64), "weights": np.array(w, dtype=np.float32)})
        for x, t, w in batch
    ]
    tokens = sum(len(x) for x, _, _ in batch)

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_service(Path(tmp) / "home")
        try:
            training = (
                tinker.ServiceClient(base_url=url, api_key=KEY)
                .create_lora_training_client(base_model=MODEL, rank=args.rank, train_unembed=False)
                .result()
            )
            local = ClientLoopModel(ModelSpec(MODEL, rank=args.rank, train_unembed=False))

            def via_tinker() -> float:
                t0 = time.perf_counter()
                fb = training.forward_backward(datums, "cross_entropy")
                step = training.optim_step(types.AdamParams(**ADAM))
                fb.result(), step.result()
                return time.perf_counter() - t0

            def in_engine() -> float:
                t0 = time.perf_counter()
                local.forward_backward(local_data, "cross_entropy")
                local.optim_step(**ADAM)
                return time.perf_counter() - t0

            via_tinker(), in_engine()  # warm-up: first passes, allocations
            runs = []
            for repeat in range(args.repeats):
                runs.append({"repeat": repeat, "tinker_s": via_tinker(), "engine_s": in_engine()})
                print(json.dumps(runs[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    tinker_s = statistics.median(r["tinker_s"] for r in runs)
    engine_s = statistics.median(r["engine_s"] for r in runs)
    result = {
        "provenance": provenance(),
        "machine": machine(),
        "settings": {
            "model": MODEL,
            "batch": args.batch,
            "tokens": tokens,
            "rank": args.rank,
            "repeats": args.repeats,
            "client": f"tinker {tinker.__version__}",
        },
        "medians": {
            "tinker_s": tinker_s,
            "engine_s": engine_s,
            "overhead_s": tinker_s - engine_s,
            "ratio": tinker_s / engine_s,
        },
        "runs": runs,
    }
    out = ROOT / "bench" / "results" / f"tinker-step-{machine_tag()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["medians"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
