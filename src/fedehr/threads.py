"""Independent CPU batches on worker threads, for the samplers.

On the CPU, batches in parallel beat torch's intra-op parallelism for sampling: most operations (per-hour GRU
steps, skinny per-hour layers) are too small to split, and each split one waits at an OpenMP barrier, which
costs a scheduler time slice whenever the machine is busy. So with ``torch.get_num_threads()`` = k > 1 the
samplers run k batches at once on threads of one intra-op thread each.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch


def block_seed(seed: int, index: int) -> int:
    """The seed of block ``index`` of a draw seeded with ``seed``: blocks get independent streams, so results do
    not depend on which thread runs a block or in which order."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def run_batches(solve: Callable[..., Any], draws: Iterable[tuple[Any, ...]], workers: int) -> list[Any]:
    """[solve(*d) for d in draws], on ``workers`` threads of one intra-op thread each when workers > 1.

    Draws are consumed in order in the calling thread (so a random stream drawn there does not depend on
    ``workers``) and at most 2 × workers are in flight. The caller's thread setting is restored afterwards
    (``torch.set_num_threads`` sets the calling thread's OpenMP/MKL team size).
    """
    if workers <= 1:
        return [solve(*d) for d in draws]
    n_threads = torch.get_num_threads()
    out: list[Any] = []
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            pending: deque[Future[Any]] = deque()
            for d in draws:
                pending.append(pool.submit(solve, *d))
                while len(pending) > 2 * workers:  # bound the inputs held in memory
                    out.append(pending.popleft().result())
            out.extend(f.result() for f in pending)
    finally:
        torch.set_num_threads(n_threads)
    return out
