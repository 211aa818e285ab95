"""Give freed heap memory back to the operating system.

glibc's malloc keeps memory that large temporary tensors released (per thread arena) and reuses it later; the
process's resident size stays at its high-water mark. Where a long-lived process (the ServerApp's) has just
finished a memory-hungry step that will not recur soon, ``release_heap`` returns those pages, which keeps the
quickstart inside its memory budget (issue 5: whole-tree RSS <= 2 GB). Elsewhere than glibc it does nothing:
those allocators return memory on their own terms, and no result depends on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_heap() -> bool:
    """Collect garbage, then ``malloc_trim(0)``; True when glibc released memory."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
