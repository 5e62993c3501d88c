"""What a measured number depends on: the machine, the code and the libraries it ran with.

Written into every results file (the quickstart's, the benchmarks'), so that a figure in the
README can be traced to the CPU kind, precision, commit and versions that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # what decides kernels and `precision: auto`
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")  # set by make test-avx2
PACKAGES = ("tunesmith", "torch", "transformers", "peft", "trl")


def machine() -> dict:
    """The CPU, its relevant flags, and the precision `auto` picks on it."""
    import torch

    from tunesmith.runtime.precision import device, resolve_precision

    cpu, flags, fields = platform.processor(), set[str](), dict[str, str]()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
        cpu, flags = fields.get("model name", cpu), set(fields.get("flags", "").split())
    # a model name such as "AMD EPYC" hides the generation; family and model do not (AMD: 25 Zen 3/4, 26 Zen 5)
    generation = {k: int(fields[k]) for k in ("cpu family", "model") if fields.get(k, "").isdigit()}
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_family": generation.get("cpu family"),
        "cpu_model": generation.get("model"),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_limits": {k: os.environ[k] for k in KERNEL_LIMITS if k in os.environ},
        "auto_precision": resolve_precision("auto", device()),
        **(gpu() if torch.cuda.is_available() else {}),
    }


def gpu() -> dict:
    """The GPU torch computes on, where there is one."""
    import torch

    return {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count()}


def kernels_limited(m: dict) -> bool:
    """Kernels held below what the CPU has (`make test-avx2`'s AVX2 on an AVX-512 CPU): the other
    kind's numerics, not its speed."""
    return "avx512f" in m["cpu_flags"] and not m["torch_cpu_capability"].upper().startswith("AVX512")


def machine_tag(m: dict | None = None) -> str:
    """e.g. avx512-bf16: what a result file's numbers depend on most (vector width, precision);
    `-emulated` where the kernels were limited below the CPU's, so such a file is never read as a
    measurement of the machine kind it imitates."""
    m = m or machine()
    if m.get("gpu"):  # e.g. cuda-h100-bf16: the GPU computes, not the CPU
        model = next((w for w in m["gpu"].replace("-", " ").split() if any(c.isdigit() for c in w)), "gpu")
        return f"cuda-{model.lower()}-{m['auto_precision']}"
    tag = f"{m['torch_cpu_capability'].lower()}-{m['auto_precision']}"
    return f"{tag}-emulated" if kernels_limited(m) else tag


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def commit(also: tuple[Path, ...] = ()) -> str | None:
    """The checkout's commit, with '+dirty' when the package's own files (or the folders in `also`,
    e.g. the benchmark's code) differ from it, as the numbers depend on them; an edited README
    does not count. None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *map(str, also)],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance(also: tuple[Path, ...] = ()) -> dict:
    m = machine()
    return {
        "machine": m,
        "machine_tag": machine_tag(m),
        "commit": commit(also),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def write_results(directory: Path, name: str, table: dict, seconds: float | None = None) -> Path:
    """An example's measured table as `directory/NAME-<machine tag>.json`, with its provenance and
    wall-clock minutes, written whole or not at all; README's tables are rendered from these."""
    from tunesmith import atomic

    where = provenance()
    out = directory / f"{name}-{where['machine_tag']}.json"
    atomic.write_text(
        out,
        json.dumps({"provenance": where, "total_minutes": seconds / 60 if seconds else None, "table": table}, indent=1)
        + "\n",
    )
    return out
