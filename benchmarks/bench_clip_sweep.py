#!/usr/bin/env python
"""A CLIP β sweep end to end, standard evaluator against the fast one (issue 13), with the bare
forward pass measured in the same run.

    python benchmarks/bench_clip_sweep.py run --machine h100 --models ViT-B-32 ViT-L-14
    python benchmarks/bench_clip_sweep.py run --device cpu --models tiny --scale 0.02 --modes off
    python benchmarks/bench_clip_sweep.py report benchmarks/results/clip_sweep_h100.json

Per model (random weights; 8 synthetic image sets sized like suite 8's validation splits, written
and cached once as by ``benchmarks/bench_clip_eval.py``), through ``lines.clip.stages.Bench``,
the object every CLIP stage evaluates with:

- **standard**: ``fast_eval false`` (memory-mapped uint8 batches copied per batch, fp32 tower
  under bf16 autocast, batch 256): τ_MTL (task arithmetic of ``--n_finetuned`` random fine-tuned
  checkpoints) once, then per β θ = θ_0 + λ(ℓ)τ and the accuracy on all 8 sets;
- **fast**, per ``--modes`` (``off`` or a ``torch.compile`` mode): ``fast_eval true`` at
  ``--fast_batch``: the first evaluation (images made resident, the tower compiled) timed
  apart, then the same sweep; images/s end to end = images per β / seconds per β;
- **bare forward** of the same (compiled) module on one batch already on the device, and the
  ratio bare / end to end (issue 13's target: ≤ 1.3 and ≥ 30k images/s for ViT-B/32 on an H100);
- **agreement**: per task, |accuracy(fast) − accuracy(standard)| at the β values both ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_clip_eval import (  # noqa: E402
    B32,
    SUITE8,
    TINY,
    _log,
    _sync,
    run_and_report,
    write_checkpoints,
    write_data,
)
from timing import run_header  # noqa: E402

L14 = dict(width=1024, layers=24, heads=16, patch_size=14, image_size=224, output_dim=768)
CONFIGS = {"ViT-B-32": B32, "ViT-L-14": L14, "tiny": TINY}


def _ns(a: argparse.Namespace, work: Path, cfg: dict[str, int], **over: Any) -> argparse.Namespace:
    return argparse.Namespace(
        **{
            "model": "",
            "suite": "8",
            "tasks": list(SUITE8),
            "data_root": work.parent / "data",
            "layout": "imagefolder",
            "device": a.device,
            "precision": "auto",
            "batch_size": 256,
            "num_workers": a.workers,
            "heads": cfg["heads"],
            "text_heads": 0,
            "act": "quick_gelu",
            "tower": "lines",
            "threads": 0,
            "block_policy": "reference",
            "cache_dir": work.parent / "cache",
            "max_val": 0,
            "max_test": 0,
            "seed": 0,
            "fast_eval": "false",
            "compile": "off",
            **over,
        }
    )


def sweep(b: Any, tau: Any, betas: list[float]) -> tuple[list[dict[str, Any]], float]:
    """θ = θ_0 + λ(ℓ)τ and the accuracy on the 8 sets, per β; (points, seconds)."""
    from lines.scaling import lines_lambdas

    alpha = 1.0 / 8
    points = []
    t0 = time.perf_counter()
    for beta in betas:
        acc = b.accuracy(b.theta(tau, lines_lambdas(b.L, alpha, beta)), "test", list(SUITE8))
        points.append({"beta": beta, "accuracy": acc})
    _sync(b.dev)
    return points, time.perf_counter() - t0


def run_model(
    a: argparse.Namespace, model: str, images: int, save: Any, out: dict[str, Any]
) -> dict[str, Any]:
    """The standard and fast sweeps of one model, into ``out`` (saved as it goes)."""
    import numpy as np
    import torch

    from lines.clip import stages as S
    from lines.merging import make_method

    cfg = CONFIGS[model]
    work = Path(a.workdir) / model
    t0 = time.perf_counter()
    ck = write_checkpoints(work, cfg, list(SUITE8), a.n_finetuned)
    out["checkpoints_write_s"] = round(time.perf_counter() - t0, 2)
    fts = [ck / "finetuned" / f"{t}.safetensors" for t in SUITE8[: a.n_finetuned]]
    betas = [round(0.1 * i, 1) for i in range(1, 11)]

    # the standard evaluator (the cache was built by the first model's run)
    with S.Bench(_ns(a, work, cfg), ck, work / "heads") as b:
        b.accuracy(b.base, "test", list(SUITE8[:1]))  # warm-up (kernels, heads, cache)
        _sync(b.dev)
        t1 = time.perf_counter()
        tau, _ = b.task_vector("ta", fts, make_method("task_arithmetic"))
        _sync(b.dev)
        out["build_task_vector_s"] = round(time.perf_counter() - t1, 3)
        pts, dt = sweep(b, tau, betas[: a.standard_betas])
        out["standard"] = {
            "batch_size": 256,
            "betas": len(pts),
            "per_beta_s": round(dt / len(pts), 3),
            "images_per_s": round(images * len(pts) / dt, 1),
            "points": pts,
        }
        _log(model, "standard:", {k: v for k, v in out["standard"].items() if k != "points"})
        del tau
    save()
    std = {p["beta"]: p["accuracy"] for p in out["standard"]["points"]}

    out["fast"] = {}
    for mode in a.modes:
        torch.compiler.reset()  # each mode compiles from scratch
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ns = _ns(a, work, cfg, fast_eval="true", compile=mode, batch_size=a.fast_batch)
        with S.Bench(ns, ck, work / "heads") as b:
            tau, _ = b.task_vector("ta", fts, make_method("task_arithmetic"))
            t1 = time.perf_counter()
            b.accuracy(b.base, "test", list(SUITE8))  # resident images + compilation
            _sync(b.dev)
            first = time.perf_counter() - t1
            pts, dt = sweep(b, tau, betas)
            fast = b.fast()
            imgs = next((i for i, _ in fast._splits.values() if i is not None), None)
            if imgs is None or len(imgs) < a.fast_batch:  # nothing resident: a batch of its own
                c = next(iter(b._cached.values()))
                imgs = torch.from_numpy(np.array(c.images[: a.fast_batch])).to(b.dev)
            bare = fast.bare_forward(imgs[: a.fast_batch])
            e2e = images * len(pts) / dt
            diffs = [
                abs(p["accuracy"][t] - std[p["beta"]][t])
                for p in pts
                if p["beta"] in std
                for t in SUITE8
            ]
            r = {
                "batch_size": a.fast_batch,
                "first_evaluation_s": round(first, 2),
                "resident_gb": round(fast.resident_bytes / 1e9, 2),
                "betas": len(pts),
                "per_beta_s": round(dt / len(pts), 3),
                "images_per_s": round(e2e, 1),
                "bare_forward_images_per_s": round(bare, 1),
                "bare_over_end_to_end": round(bare / e2e, 3),
                "max_abs_accuracy_diff_vs_standard": round(max(diffs), 5) if diffs else None,
                "cuda_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)
                if torch.cuda.is_available()
                else None,
                "points": pts,
            }
            out["fast"][mode] = r
            _log(model, "fast", mode, {k: v for k, v in r.items() if k != "points"})
            del tau, fast, imgs  # the next mode starts with none of this one's memory
        save()
    return out


def run(a: argparse.Namespace, save: Any) -> dict[str, Any]:
    import torch

    from lines.clip.evaluate import Preprocess, cached_split
    from lines.clip.layouts import load_split

    work = Path(a.workdir)
    res: dict[str, Any] = {
        **run_header(a.machine, torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "n_finetuned": a.n_finetuned,
        "models": {},
    }
    t0 = time.perf_counter()
    sizes = write_data(work / "data", a.scale, 256, a.workers)
    images = sum(sizes.values())
    res["data"] = {"sets": sizes, "images": images, "write_s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    size = TINY["image_size"] if a.models == ["tiny"] else 224
    for t in SUITE8:  # decode once into the uint8 cache every model's Bench reads
        cached_split(
            load_split(t, "test", work / "data", layout="imagefolder"),
            Preprocess(image_size=size),
            work / "cache",
            num_workers=a.workers,
        )
    res["data"]["cache_build_s"] = round(time.perf_counter() - t0, 2)
    _log("data:", res["data"])
    for m in a.models:
        res["models"][m] = {}
        run_model(a, m, images, lambda: save(res), res["models"][m])
        save(res)
    return res


def report(path: Path) -> str:
    r = json.loads(Path(path).read_text())
    p = r["platform"]
    lines = [
        f"# CLIP β sweep, standard vs fast evaluator: {r['machine']} ({p.get('gpu') or 'CPU'})",
        "",
        f"Generated by `python benchmarks/bench_clip_sweep.py report {Path(path).name}` from a run "
        f"on {r['created']} (torch {p['torch']}, {p['cpus']} CPUs): random weights, "
        f"{r['data']['images']} synthetic images in 8 sets sized like suite 8's validation splits; "
        f"per β: θ = θ_0 + λ(ℓ)τ (task arithmetic of {r['n_finetuned']} checkpoints, α = 1/8) and "
        "the accuracy on all 8 sets, through `lines.clip.stages.Bench`. See the script's docstring.",
        "",
        "| model | evaluator | batch | first evaluation s | per β s | images/s end to end | "
        "bare forward images/s | bare / end to end | max abs Δ accuracy vs standard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, d in r["models"].items():
        s = d["standard"]
        lines.append(
            f"| {m} | standard (autocast bf16, memory-mapped batches) | {s['batch_size']} | | "
            f"{s['per_beta_s']} | {s['images_per_s']:,.0f} | | | |"
        )
        for mode, f in d.get("fast", {}).items():
            diff = f["max_abs_accuracy_diff_vs_standard"]
            lines.append(
                f"| {m} | fast, compile {mode} | {f['batch_size']} | {f['first_evaluation_s']} | "
                f"{f['per_beta_s']} | {f['images_per_s']:,.0f} | "
                f"{f['bare_forward_images_per_s']:,.0f} | {f['bare_over_end_to_end']} | "
                f"{'' if diff is None else f'{100 * diff:.2f} pt'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--machine", default="h100")
    p.add_argument("--models", nargs="+", default=["ViT-B-32"], choices=sorted(CONFIGS))
    p.add_argument("--modes", nargs="+", default=["off", "default", "max-autotune-no-cudagraphs"])
    # the stages' default batch is 256; the H100 run of 2026-11-27 used 512 for the fast path
    p.add_argument("--fast_batch", type=int, default=512)
    p.add_argument("--standard_betas", type=int, default=3)
    p.add_argument("--n_finetuned", type=int, default=8)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the reference val sizes")
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--workdir", default="/tmp/lines-clip-sweep")
    p.add_argument("--out", default=str(HERE / "results"))
    p = sub.add_parser("report")
    p.add_argument("json")
    a = ap.parse_args(argv)
    return run_and_report(a, "clip_sweep", run, report)


if __name__ == "__main__":
    sys.exit(main())
