"""Timing and result headers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

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


def run_header(machine: str, device: torch.device) -> dict[str, Any]:
    """The fields a benchmark's results file starts with: the machine's name, when, and what
    it ran on (the GPU's name when ``device`` is CUDA; the load average, for shared CPUs)."""
    return {
        "machine": machine,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
    }


def against_bare(units: int, unit: str, ratio_of: str, **seconds: float) -> dict[str, float]:
    """Each timing (``name=seconds``, one of them ``bare_forward``) as ``name_s`` and
    ``name_<unit>_per_s``, and ``<ratio_of>_over_bare``: the evaluator's time over the bare
    forward's."""
    out = {f"{k}_s": round(v, 3) for k, v in seconds.items()}
    out |= {f"{k}_{unit}_per_s": round(units / v, 1) for k, v in seconds.items()}
    out[f"{ratio_of}_over_bare"] = round(seconds[ratio_of] / seconds["bare_forward"], 3)
    return out
