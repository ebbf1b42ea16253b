"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_of(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn`` after one warm-up call (kernels,
    allocator, caches), each ended by a device synchronisation."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best
