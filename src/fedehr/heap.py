"""Give freed heap memory back to the operating system.

glibc's malloc keeps memory that large temporary tensors released (per thread arena) and reuses it later; the
process's resident size stays at its high-water mark. Where a long-lived process (the ServerApp's) has just
finished a memory-hungry step that will not recur soon, ``release_heap`` returns those pages, which keeps the
quickstart inside its memory budget (issue 5: whole-tree RSS <= 2 GB). Elsewhere than glibc it does nothing:
those allocators return memory on their own terms, and no result depends on it.

``empty`` allocates large output arrays through torch rather than numpy: numpy asks the kernel for
transparent huge pages on every allocation of 4 MiB or more (``madvise(MADV_HUGEPAGE)``), and where the kernel
then compacts memory on the first touch (``/sys/kernel/mm/transparent_hugepage/defrag`` = ``madvise``, a common
default) writing a fresh 165 MB array took 0.36 s instead of 0.04 s on our 2-core VM. A fresh process's
20,000-stay draw took 1.41 s instead of 1.55 s with two threads (median of 4 alternated runs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any

import numpy as np
import torch


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


def empty(shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """An uninitialised numpy array of ``shape`` and ``dtype`` whose memory torch allocated (no huge-page advice;
    see the module docstring). The array keeps the memory alive; it behaves as any numpy array."""
    want = np.dtype(dtype)
    if want not in _TORCH_DTYPES:
        raise TypeError(f"fedehr.heap.empty has no torch dtype for {want}; expected one of "
                        + ", ".join(str(d) for d in _TORCH_DTYPES))
    return torch.empty(shape, dtype=_TORCH_DTYPES[want]).numpy()


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                 np.dtype(np.uint16): torch.uint16, np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
                 np.dtype(np.bool_): torch.bool}
