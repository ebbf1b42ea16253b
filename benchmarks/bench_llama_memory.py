#!/usr/bin/env python
"""Peak memory of `lines merge` per method and trim scope on LLaMA-shaped checkpoints (issue 13:
"peak ≤ 2× one checkpoint for every method and scope").

    python benchmarks/bench_llama_memory.py [--data-dir benchmarks/data/llama] [--n 4]
        [--out benchmarks/results/merge_llama_cpu_memory.json] [--label NAME]

Writes a pretrained checkpoint of 271M float32 parameters (vocab 32,000, hidden 1,024, 16 layers,
intermediate 2,816 — the shape of the issue's peer comparison) and N fine-tuned ones (θ_0 + 1e-3·
N(0, 1)) once, then runs each merge as its own process (`python -m lines.cli merge … --no-hash`)
and records its wall time and peak RSS (``ru_maxrss`` of that child alone, from ``wait4``) against
the size of one checkpoint. Wall times are only comparable on an idle machine; peaks do not depend
on load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
V, H, FF, L = 32000, 1024, 2816, 16
CASES = [
    ("task_arithmetic", []),
    ("ties", ["--scope", "global"]),
    ("ties", ["--scope", "per_tensor"]),
    ("magnitude_prune", ["--scope", "per_tensor"]),
    ("dare", []),
    ("consensus", []),
]


def shapes():
    yield "model.embed_tokens.weight", (V, H)
    for i in range(L):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{n}.weight", (H, H)
        yield p + "mlp.gate_proj.weight", (FF, H)
        yield p + "mlp.up_proj.weight", (FF, H)
        yield p + "mlp.down_proj.weight", (H, FF)
        yield p + "input_layernorm.weight", (H,)
        yield p + "post_attention_layernorm.weight", (H,)
    yield "model.norm.weight", (H,)
    yield "lm_head.weight", (V, H)


def make(data: Path, n: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    data.mkdir(parents=True, exist_ok=True)
    files = [data / "pretrained.safetensors"] + [data / f"ft_{j}.safetensors" for j in range(n)]
    if all(f.is_file() for f in files):
        return files
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes()}
    save_file(base, str(files[0]))
    for j in range(n):
        g = torch.Generator().manual_seed(1 + j)
        ft = {k: v + torch.randn(v.shape, generator=g) * 1e-3 for k, v in base.items()}
        save_file(ft, str(files[1 + j]))
    return files


def run_one(files: list[Path], method: str, extra: list[str], out: Path) -> dict:
    argv = [sys.executable, "-m", "lines.cli", "merge", "--pretrained", str(files[0])]
    argv += ["--finetuned", *map(str, files[1:]), "--method", method, *extra]
    argv += ["--out", str(out), "--overwrite", "--no-progress", "--no-hash"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{method} {extra} failed:\n{err[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / "data" / "llama")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "merge_llama_cpu_memory.json"
    )
    ap.add_argument("--label", default="lines")
    a = ap.parse_args()
    files = make(a.data_dir, a.n)
    ckpt_gb = files[0].stat().st_size / 1e9
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, extra in CASES:
            r = run_one(files, method, extra, Path(tmp) / "merged")
            r |= {"method": method, "args": " ".join(extra), "x_one_checkpoint": 0.0}
            r["x_one_checkpoint"] = round(r["peak_rss_gb"] / ckpt_gb, 2)
            print(json.dumps(r), flush=True)
            rows.append(r)
    res = {
        "label": a.label,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "checkpoint_gb": round(ckpt_gb, 3),
        "n": a.n,
        "target": "peak ≤ 2× one checkpoint for every method and scope (issue 13)",
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
