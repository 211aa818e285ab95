"""fedehr.heap: returns freed heap pages to the OS under glibc."""

import ctypes.util
import sys

import numpy as np
import psutil
import pytest

from fedehr.heap import release_heap


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's malloc_trim is Linux-only")
def test_release_heap_returns_freed_small_allocations():
    proc = psutil.Process()
    # Many allocations below the mmap threshold land on the heap and stay resident after free.
    blocks = [np.ones(16_000, dtype=np.float64) for _ in range(4_000)]  # about 500 MB
    keep = blocks[-1].copy()  # the top of the heap stays in use: only trimming inside the heap helps
    del blocks
    before = proc.memory_info().rss
    assert release_heap() is True
    after = proc.memory_info().rss
    assert before - after > 200 * 2**20, (before, after)
    assert keep.sum() == 16_000


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int64, np.bool_])
def test_empty_is_an_ordinary_writable_numpy_array_that_owns_its_memory(dtype):
    import gc

    from fedehr.heap import empty

    a = empty((3, 4, 5), dtype)
    assert isinstance(a, np.ndarray) and a.shape == (3, 4, 5) and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    a[...] = 1
    b = a[1:]  # a view keeps the memory alive after the array itself is gone
    del a
    gc.collect()
    assert (b == 1).all()


def test_empty_rejects_a_dtype_it_does_not_map():
    from fedehr.heap import empty

    with pytest.raises(TypeError, match="complex64"):
        empty((2,), np.complex64)
