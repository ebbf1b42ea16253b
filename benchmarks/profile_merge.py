#!/usr/bin/env python
"""Where the time of one merge goes: cProfile of ``merge_checkpoints`` (LiNeS, automatic α, no
hashing) on the benchmark's checkpoints, after one warm-up merge.

    python benchmarks/profile_merge.py --model ViT-B-32 --n 8 --method ties --device cuda
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--method", default="ties", choices=["ta", "ties"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=str(HERE / "data"))
    p.add_argument("--top", type=int, default=22)
    a = p.parse_args()
    import torch
    from ckpts import ensure, merge_once

    import lines  # noqa: F401

    pre, fts = ensure(Path(a.data_dir), a.model, a.n, device=a.device)
    out = Path(a.data_dir) / "profile_out.safetensors"

    def once() -> float:
        t0 = time.perf_counter()
        merge_once(pre, fts, "ties" if a.method == "ties" else "task_arithmetic", out, a.device)
        if a.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = once()
    pr = cProfile.Profile()
    pr.enable()
    t = once()
    pr.disable()
    print(f"{a.model} N={a.n} {a.method} on {a.device}: warm-up {warm:.2f} s, profiled {t:.2f} s")
    pstats.Stats(pr).sort_stats("tottime").print_stats(a.top)
    out.unlink(missing_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
