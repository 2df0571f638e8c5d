"""Keep freed CPU memory in the process while training, instead of handing it back every step.

PyTorch's CPU tensors come from glibc's malloc. A ResNet-18 step at batch 128 allocates activations
of tens of megabytes; glibc serves anything that large with a fresh `mmap` and unmaps it again on
free, so every step the kernel hands out (and zeroes) hundreds of thousands of new pages: measured
here about 230k page faults and half a second of system time per step for our step at batch 64.
Telling glibc to keep large blocks in its heap (`M_MMAP_MAX = 0`) and not to trim the heap
(`M_TRIM_THRESHOLD`) lets the next step reuse the same memory, as PyTorch's CUDA caching allocator
does on a GPU.

`keep_freed_memory()` does that for the duration of a `with` block and restores glibc's defaults
afterwards (then trims), so an app server that trained once does not keep the peak forever.
It only acts on Linux with glibc; elsewhere, or with BYOL_DEFAULT_MALLOC=1 set, it does nothing.
The numbers this buys are in benchmarks/README.md (rerun: python benchmarks/speed.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager
from typing import Iterator

# mallopt parameter numbers and glibc's defaults (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: "never trim" for practical purposes

_lock = threading.Lock()
_users = 0  # nested or concurrent trainings in one process share the setting


def _libc() -> ctypes.CDLL | None:
    if os.environ.get("BYOL_DEFAULT_MALLOC"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside the block, freed CPU memory stays in the process for reuse; yields whether it took effect."""
    global _users
    libc = _libc()
    if libc is None:
        yield False
        return
    with _lock:
        if _users == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
        _users += 1
    try:
        yield True
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)  # give the kept memory back now that training is over
