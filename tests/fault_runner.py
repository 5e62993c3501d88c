"""Runs a training config again and again, each time in a fresh forked process that a fault stops:
`kill -9` at a chosen point, or SIGTERM. Used by test_faults.py.

The parent imports everything once and never computes with torch itself, so each fork starts a
real run in a fraction of a second (a new interpreter would spend seconds on imports). Commands
come as JSON lines on stdin, one result line per command on stdout:
  {"config": path, "resume": bool, "fault": null | {"kind": ..., "at": n}}  ->  {"status": "exit 0" | "killed 9" | ...}
Kinds: "step" (SIGKILL once the n-th step's numbers are in), "save" (SIGKILL while the n-th
checkpoint is written, `phase` saying where), "log" (SIGKILL half-way through writing the n-th
metrics line), "sigterm" / "sigint" (the signal after the n-th step: the run should checkpoint and
stop cleanly), "report" (SIGKILL once training is over, while the run writes its report).
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _kill(sig=signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def _arm(fault: dict) -> None:
    """Patch the run (in the child only) so that the fault happens where asked."""
    from tunesmith.engine import checkpoint, logbook, loop_state

    kind, at = fault["kind"], fault["at"]
    calls = {"n": 0}

    def counted() -> bool:
        calls["n"] += 1
        return calls["n"] == at

    if kind in ("step", "sigterm", "sigint"):
        original = loop_state.Window.add
        sig = {"step": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[kind]

        def add(window, totals):  # killed once the step's totals are counted
            original(window, totals)
            if counted():
                _kill(sig)

        loop_state.Window.add = add
    elif kind == "save":
        phase = fault["phase"]
        write, rename = checkpoint._write, os.rename

        def write_then_die(folder, contents):
            if counted():
                if phase == "file1":
                    checkpoint.save_file(contents.weights, folder / "trainable.safetensors")
                if phase in ("file0", "file1"):  # a torn safetensors file, as a kill mid-write leaves it
                    name = "trainable.safetensors" if phase == "file0" else "optimizer.safetensors"
                    (folder / name).write_bytes(b"\x00" * 1000)
                    _kill()
                write(folder, contents)
                if phase == "before_rename":
                    _kill()
                if phase == "after_rename":

                    def rename_then_die(src, dst):
                        rename(src, dst)
                        _kill()

                    checkpoint.os.rename = rename_then_die
                return
            write(folder, contents)

        checkpoint._write = write_then_die
    elif kind == "report":  # training done and final/ saved; killed while measuring and reporting
        import tunesmith.run.job

        tunesmith.run.job.write_report = lambda *args, **kwargs: _kill()
    elif kind == "log":
        original_write = logbook.MetricsLog.write

        def torn(self, record):
            if counted() and self.file is not None:
                line = json.dumps(record)
                self.file.write(line[: len(line) // 2])
                self.file.flush()
                _kill()
            original_write(self, record)

        logbook.MetricsLog.write = torn
    else:
        raise ValueError(kind)


def warm_imports() -> None:
    """What a run imports lazily (seconds of it, mostly peft and transformers' model modules),
    imported once here so that each forked run starts at once. Imports only: no computation."""
    import peft  # noqa: F401
    import transformers.models.llama.configuration_llama  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    import tunesmith.engine.loop  # noqa: F401
    import tunesmith.methods.sft  # noqa: F401
    import tunesmith.model.adapters  # noqa: F401
    import tunesmith.report.build  # noqa: F401
    import tunesmith.run.evaluate  # noqa: F401


def main() -> None:
    from tunesmith.config import load_config
    from tunesmith.errors import Stopped
    from tunesmith.run import train

    warm_imports()

    for line in sys.stdin:
        command = json.loads(line)
        cfg = load_config(command["config"], [])
        pid = os.fork()
        if pid == 0:  # the run
            code = 0
            try:
                if command.get("fault"):
                    _arm(command["fault"])
                train(cfg, resume=command["resume"], quiet=True)
            except Stopped:
                code = 0
            except BaseException as e:  # report, then leave without running the parent's cleanup
                print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        result = (
            f"exit {os.waitstatus_to_exitcode(status)}" if os.WIFEXITED(status) else f"killed {os.WTERMSIG(status)}"
        )
        print(json.dumps({"status": result}), flush=True)


if __name__ == "__main__":
    main()
