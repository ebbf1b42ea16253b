#!/usr/bin/env python
"""Where a GPU merge's time goes, by parts (issue 13): the raw parallel read floor, the read-ahead
alone at several depths / worker counts, and the whole merge (no hashing) at the same settings.

    python benchmarks/probe_gpu_read.py --model ViT-B-32 --n 8
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default=str(HERE / "data"))
    p.add_argument("--settings", nargs="+", default=["2:8", "4:8", "8:8", "8:15", "16:15"])
    p.add_argument(
        "--resident",
        nargs="*",
        default=["8:15", "32:15", "8:8", "2:15"],
        help="chunk MiB:workers of Resident loads",
    )
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    import torch
    from ckpts import ensure, merge_once

    import lines  # noqa: F401
    import lines.engine.stream as st
    from lines.io import open_checkpoint
    from lines.readahead import ReadAhead

    dev = torch.device(a.device)
    pre, fts = ensure(Path(a.data_dir), a.model, a.n, device=a.device)
    files = [pre, *fts]
    total = sum(f.stat().st_size for f in files)
    out = Path(a.data_dir) / "probe_out.safetensors"
    res: dict = {"model": a.model, "n": a.n, "input_bytes": total}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def best(fn) -> float:
        fn()
        ts = []
        for _ in range(a.repeat):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return round(min(ts), 4)

    # 1. the floor: every file read once with preadv, 64 MiB chunks, T threads, into pinned memory
    chunk = 64 << 20
    bufs = {}

    def raw(threads: int) -> None:
        jobs = [(f, o) for f in files for o in range(0, f.stat().st_size, chunk)]

        def one(job):
            f, o = job
            b = bufs.setdefault(
                threading_id(), torch.empty(chunk, dtype=torch.uint8, pin_memory=dev.type == "cuda")
            )
            fd = os.open(f, os.O_RDONLY)
            try:
                os.preadv(fd, [memoryview(b.numpy())], o)
            finally:
                os.close(fd)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, jobs))

    import threading

    def threading_id() -> int:
        return threading.get_ident()

    for t in (1, 4, 8, 15):
        res[f"raw_pread_{t}t_s"] = best(functools.partial(raw, t))
    print(json.dumps(res), flush=True)

    # 2. the read-ahead alone, and 3. the whole merge, per depth:workers
    cks = [open_checkpoint(f) for f in files]
    from lines.engine.stream import spans

    keys = [k for k in cks[0].keys() if cks[0].info(k).dtype.is_floating_point]
    units = [(k, s) for k in keys for s in spans(cks[0].info(k).numel, None)]
    orig = st.ReadAhead

    def merge(method: str, resident: bool) -> None:
        merge_once(pre, fts, method, out, a.device, resident)

    for s in a.settings:
        depth, workers = map(int, s.split(":"))

        def read_all(depth: int = depth, workers: int = workers) -> None:
            with ReadAhead(cks, units, dev, depth=depth, workers=workers) as ra:
                for u in units:
                    ra.get(u)

        res[f"readahead_{s}_s"] = best(read_all)
        st.ReadAhead = functools.partial(orig, depth=depth, workers=workers)
        res[f"merge_ta_{s}_s"] = best(lambda: merge("task_arithmetic", False))
        st.ReadAhead = orig
        print(json.dumps(res), flush=True)
    from lines.readahead import Resident

    for s in a.resident:
        chunk_mb, workers = map(int, s.split(":"))

        def load(chunk_mb: int = chunk_mb, workers: int = workers) -> None:
            Resident(cks, keys, dev, chunk_bytes=chunk_mb << 20, workers=workers).close()

        res[f"resident_load_{s}_s"] = best(load)
    print(json.dumps(res), flush=True)
    for m in ("task_arithmetic", "ties"):
        for resident in (False, True):
            name = "resident" if resident else "readahead"
            res[f"merge_{m}_{name}_s"] = best(lambda m=m, r=resident: merge(m, r))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
