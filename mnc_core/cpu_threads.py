"""Sharing row-wise inference work out over the CPU's intra-op threads.

Some CPU kernels run on one core (torchvision's `roi_align`) or are bound by memory traffic when applied to a
whole (300, 256, 14, 14) RoI tensor at once (a fresh 60 MB result is written and read again). Done a few rows
at a time, each thread's rows stay in cache; torch ops release the GIL, so Python threads run them in
parallel. Each call writes its own rows of a preallocated result, so the values are the one-shot op's.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


def for_row_chunks(count: int, chunk: int, work: Callable[[slice], None]) -> None:
    """Calls `work(rows)` for consecutive slices of at most `chunk` of range(count), the slices split into
    contiguous runs, one per intra-op thread (`torch.get_num_threads()`). `work` must only write the rows it
    is given. The caller's grad mode holds in the threads too (grad modes are per thread)."""
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def run(start: int, stop: int) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            for first in range(start, stop, chunk):
                work(slice(first, min(first + chunk, stop)))

    workers = min(torch.get_num_threads(), -(-count // chunk))
    if workers <= 1:
        run(0, count)
        return
    bounds = [min(count, -(-count * i // (workers * chunk)) * chunk) for i in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: run(bounds[i], bounds[i + 1]), range(workers)))
