"""Give freed tensor memory back to the operating system during CPU training (glibc only).

glibc serves large blocks with mmap and unmaps them when freed, but each time one is freed it
raises that size threshold to the block's size (up to 32 MiB); from then on, tensors of that
size come from the heap, where a freed block stays counted in the process's memory and the
heap fragments as sequence lengths vary. A CPU run's RSS then creeps up step after step.
Fixing the threshold keeps every tensor above it mmap'd and returned when freed, at the price of
fresh (zeroed) pages for every large tensor: `bench/memory.py` measures what it saves and costs,
which is why it is an option (`train.return_memory`) and not the default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20  # larger than any per-token vector, smaller than any activation or weight


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:  # musl and other C libraries without glibc's malloc tuning
        return None


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for the rest of this process. True where it took effect."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1)


def trim_heap() -> bool:
    """Hand the heap's free blocks back to the OS now (glibc `malloc_trim`). Worth it after a burst
    of large temporary allocations that will not recur, such as quantizing a model on load: on the
    bundled model that leaves ~480 MiB of freed fp32 weights counted in the process otherwise."""
    libc = _glibc()
    return bool(libc and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


def file_mappings() -> list[tuple[int, int]]:
    """[start, end) of this process's memory-mapped regular files (Linux: /proc/self/maps): where
    a checkpoint's tensors live when safetensors loads them without copying."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:  # no procfs: nothing is known to be mapped
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):  # a file, even one deleted since
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def own_mapped_tensors(model) -> int:
    """Copy every parameter and buffer of `model` that still points into a memory-mapped file (the
    checkpoint it was loaded from) into the process's own memory; returns the bytes copied.

    One such tensor keeps the whole mapping alive, and every page of it that was ever read stays
    counted in the process's memory. After the frozen base is cast to bf16 (or quantized), the
    fp32 pages the cast read are dead weight, held only by the embeddings and norms that stayed
    behind: ~400 MiB on the bundled model, through the whole run. Values are unchanged. Then the
    heap blocks freed on the way go back to the OS.
    """
    import gc

    import torch

    ranges = file_mappings()
    copied = 0
    with torch.no_grad():
        for module in model.modules():
            for _, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if t is None or t.device.type != "cpu":
                    continue
                ptr = t.untyped_storage().data_ptr()
                if any(start <= ptr < end for start, end in ranges):
                    t.data = t.data.clone()
                    copied += t.nbytes
    gc.collect()
    trim_heap()
    return copied
