#!/usr/bin/env python
"""CLIP evaluation benchmark: how fast the CLIP pipeline's evaluator runs, on synthetic images and
random weights (no dataset or checkpoint needed).

    python benchmarks/bench_clip_eval.py run --device cuda --machine h100 --out benchmarks/results
    python benchmarks/bench_clip_eval.py run --model tiny --scale 0.02 --device cpu --out /tmp/x
    python benchmarks/bench_clip_eval.py report benchmarks/results/clip_eval_h100.json

What is measured (ViT-B/32 with random weights; 8 synthetic image sets named and sized like the
reference validation splits of suite "8", JPEGs written by the run into ``--workdir``):

- evaluation throughput (images/s) of ``lines.clip.evaluate.evaluate`` without the preprocessed
  tensor cache (JPEG decode + resize + crop in ``--workers`` DataLoader workers, every time), the
  first cached pass (decodes once and writes the uint8 cache) and with the cache (reads the
  memory-mapped uint8 tensors); bf16 autocast (the default on CUDA) and fp32;
- one 8-task LiNeS β sweep exactly as ``lines.clip.stages`` runs it (``Bench``): build τ_MTL once
  with ``build_task_vector`` (task arithmetic, 8 random fine-tuned checkpoints), then per β:
  θ = θ_0 + λ(ℓ)τ on the device, load, evaluate the 8 sets;
- the dependency-free tower (``lines.clip.tower``) against open_clip's (when open_clip is
  importable): outputs on one batch (bf16 and fp32) and throughput.

The sets are read as the ``test`` split of an ImageFolder layout (``<Task>/test/<class>/``): the
code path is the one the val sweep takes; only the split's name differs (a val split is drawn
from a train folder ten times larger, which a benchmark need not write).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from timing import run_header  # noqa: E402

SUITE8 = ("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD")
# Approximate sizes of the reference validation splits (10% of train, at most 5,000; EuroSAT's
# own val folder): what one β of a sweep evaluates.
VAL_SIZES = {
    "SUN397": 1985,
    "Cars": 814,
    "RESISC45": 1890,
    "EuroSAT": 2700,
    "SVHN": 5000,
    "GTSRB": 2664,
    "MNIST": 5000,
    "DTD": 376,
}
TINY = dict(width=64, layers=2, heads=4, patch_size=8, image_size=32, output_dim=48)
B32 = dict(width=768, layers=12, heads=12, patch_size=32, image_size=224, output_dim=512)


def _log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Synthetic data and weights


def write_data(root: Path, scale: float, size: int, workers: int) -> dict[str, int]:
    from multiprocessing import Pool

    sizes = {t: max(8, round(VAL_SIZES[t] * scale)) for t in SUITE8}
    jobs = []
    for i, t in enumerate(SUITE8):
        per = -(-sizes[t] // workers)
        for j in range(workers):
            lo, hi = j * per, min(sizes[t], (j + 1) * per)
            if hi > lo:
                folder = root / t / "test"
                jobs.append((str(folder), hi - lo, size, 1000 * i + j, 10, lo))
    with Pool(workers) as pool:
        pool.map(_write_chunk, jobs)
    return sizes


def _write_chunk(job: tuple[str, int, int, int, int, int]) -> int:
    """``_write_images`` for images lo..lo+n of a task (distinct file names across chunks)."""
    import numpy as np
    from PIL import Image

    folder, n, size, seed, classes, lo = job
    rng = np.random.default_rng(seed)
    for k in range(n):
        i = lo + k
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        a = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
        p = Path(folder) / str(i % classes) / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p, quality=90)
    return n


def random_tower(cfg: dict[str, int], seed: int) -> dict[str, Any]:
    """A ``visual.*`` state dict of the tower ``cfg`` with every parameter random."""
    import torch

    from lines.clip.tower import LeanVisionTransformer

    m = LeanVisionTransformer(
        image_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        width=cfg["width"],
        layers=cfg["layers"],
        heads=cfg["heads"],
        mlp_ratio=4.0,
        output_dim=cfg["output_dim"],
    )
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith("weight") and v.ndim == 1:
            sd[f"visual.{k}"] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            sd[f"visual.{k}"] = 0.02 * torch.randn(v.shape, generator=g)
    return sd


def write_checkpoints(
    work: Path, cfg: dict[str, int], tasks: list[str], n_finetuned: int | None = None
) -> Path:
    """ckpt/ as the prepare stage leaves it (pretrained, a fine-tuned tower for each of the first
    ``n_finetuned`` tasks (default: all), prepare.json) and heads/ as the heads stage does
    (random heads for every task), for ``lines.clip.stages.Bench``."""
    import torch

    from lines.clip.datasets import get_task
    from lines.io import save_state_dict, sha256_file

    ck = work / "ckpt"
    (ck / "finetuned").mkdir(parents=True, exist_ok=True)
    base = random_tower(cfg, 0)
    save_state_dict(ck / "pretrained.safetensors", base)
    index: dict[str, Any] = {
        "pretrained": {"sha256": sha256_file(ck / "pretrained.safetensors")},
        "text": {"sha256": "synthetic", "model_id": "synthetic"},
        "finetuned": {},
    }
    for i, t in enumerate(tasks[:n_finetuned]):
        g = torch.Generator().manual_seed(100 + i)
        sd = {k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        f = ck / "finetuned" / f"{t}.safetensors"
        save_state_dict(f, sd)
        index["finetuned"][t] = {"path": f"finetuned/{t}.safetensors", "sha256": sha256_file(f)}
    (ck / "prepare.json").write_text(json.dumps(index))
    heads = work / "heads"
    heads.mkdir(exist_ok=True)
    weights, info = {}, {}
    for i, t in enumerate(tasks):
        n = get_task(t).num_classes
        w = torch.randn(n, cfg["output_dim"], generator=torch.Generator().manual_seed(i))
        weights[t] = (100 * w / w.norm(dim=-1, keepdim=True)).contiguous()
        info[t] = {"key": "synthetic", "num_classes": n}
    save_state_dict(heads / "heads.safetensors", weights)
    (heads / "heads.json").write_text(json.dumps({"model_id": "synthetic", "tasks": info}))
    return ck


# ----------------------------------------------------------------------------------------------
# The run


def run(a: argparse.Namespace, save: Any = lambda res: None) -> dict[str, Any]:
    import torch

    from lines.clip import stages as S
    from lines.clip.evaluate import cached_split, evaluate
    from lines.clip.layouts import load_split
    from lines.merging import make_method
    from lines.scaling import lines_lambdas

    cfg = TINY if a.model == "tiny" else B32
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tasks = list(SUITE8)
    res: dict[str, Any] = {
        **run_header(a.machine, torch.device(a.device)),
        "model": a.model,
        "device": a.device,
        "batch_size": a.batch_size,
        "workers": a.workers,
    }
    t0 = time.perf_counter()
    sizes = write_data(work / "data", a.scale, a.image_px, a.workers)
    res["data"] = {
        "sets": sizes,
        "images": sum(sizes.values()),
        "jpeg_px": a.image_px,
        "write_s": round(time.perf_counter() - t0, 2),
    }
    _log(f"data: {sum(sizes.values())} JPEGs in {res['data']['write_s']} s")
    t0 = time.perf_counter()
    ck = write_checkpoints(work, cfg, tasks)
    res["checkpoints_write_s"] = round(time.perf_counter() - t0, 2)

    ns = argparse.Namespace(
        model=a.model,
        suite="8",
        tasks=tasks,
        data_root=work / "data",
        layout="imagefolder",
        device=a.device,
        precision="auto",
        batch_size=a.batch_size,
        num_workers=a.workers,
        heads=cfg["heads"],
        text_heads=0,
        act="quick_gelu",
        tower="lines",
        threads=0,
        block_policy="reference",
        cache_dir=work / "cache",
        max_val=0,
        max_test=0,
        seed=0,
    )
    b = S.Bench(ns, ck, work / "heads")
    dev = b.dev
    # warm up the kernels (cuDNN conv algorithm choice, autocast) on a few images
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
        b.encoder(torch.zeros(8, 3, cfg["image_size"], cfg["image_size"], device=dev))
    _sync(dev)

    # 1. without the cache: decode + resize + crop in DataLoader workers, every evaluation
    big = max(tasks, key=lambda t: sizes[t])
    split = load_split(big, "test", work / "data", layout="imagefolder")
    t0 = time.perf_counter()
    r = evaluate(
        b.encoder,
        b.head(big),
        split,
        cache_dir=None,
        preprocess=b.preprocess,
        device=dev,
        batch_size=a.batch_size,
        num_workers=a.workers,
    )
    _sync(dev)
    dt = time.perf_counter() - t0
    res["no_cache"] = {
        "task": big,
        "images": r.total,
        "s": round(dt, 3),
        "images_per_s": round(r.total / dt, 1),
        "workers": a.workers,
    }
    _log("no cache:", res["no_cache"])
    save(res)

    # 2. the first cached pass: decode once, write the uint8 cache (all 8 sets)
    t0 = time.perf_counter()
    n = 0
    for t in tasks:
        n += len(
            cached_split(
                b.split(t, "test"),
                b.preprocess,
                ns.cache_dir,
                batch_size=a.batch_size,
                num_workers=a.workers,
            )
        )
    dt = time.perf_counter() - t0
    res["cache_build"] = {"images": n, "s": round(dt, 3), "images_per_s": round(n / dt, 1)}
    _log("cache build:", res["cache_build"])
    save(res)

    # 3. with the cache, bf16 autocast (CUDA default) and fp32: all 8 sets, best of 2
    for prec in ["auto", "fp32"] if dev.type == "cuda" else ["auto"]:
        ns.precision = prec
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            b.accuracy(None, "test", tasks)
            _sync(dev)
            times.append(time.perf_counter() - t0)
        imgs = sum(b.num_examples(t, "test") for t in tasks)
        key = "cached_bf16" if prec == "auto" and dev.type == "cuda" else f"cached_{prec}"
        res[key] = {
            "images": imgs,
            "s": round(min(times), 3),
            "images_per_s": round(imgs / min(times), 1),
            "runs_s": [round(x, 3) for x in times],
        }
        _log(key, res[key])
        save(res)
    ns.precision = "auto"

    # 4. one 8-task β sweep: τ_MTL once, then per β apply + evaluate 8 sets
    betas = [round(0.1 * i, 1) for i in range(1, 11)]
    t0 = time.perf_counter()
    tau, man = b.task_vector(
        "ta", [b.ck.for_task(t) for t in tasks], make_method("task_arithmetic")
    )
    _sync(dev)
    build = time.perf_counter() - t0
    alpha = 1.0 / len(tasks)
    per_beta = []
    t_sweep = time.perf_counter()
    for beta in betas:
        t1 = time.perf_counter()
        sd = b.theta(tau, lines_lambdas(b.L, alpha, beta))
        _sync(dev)
        t_apply = time.perf_counter() - t1
        b.accuracy(sd, "test", tasks)
        _sync(dev)
        per_beta.append(
            {
                "beta": beta,
                "apply_s": round(t_apply, 4),
                "total_s": round(time.perf_counter() - t1, 3),
            }
        )
    sweep_s = time.perf_counter() - t_sweep
    imgs = sum(b.num_examples(t, "test") for t in tasks)
    res["beta_sweep"] = {
        "method": "task_arithmetic + LiNeS (α = 1/8)",
        "num_betas": len(betas),
        "images_per_beta": imgs,
        "build_task_vector_s": round(build, 3),
        "sweep_s": round(sweep_s, 3),
        "total_s": round(build + sweep_s, 3),
        "per_beta_mean_s": round(sweep_s / len(betas), 3),
        "per_beta": per_beta,
    }
    _log("sweep:", {k: v for k, v in res["beta_sweep"].items() if k != "per_beta"})
    save(res)

    # 5. the lean tower against open_clip's
    res["tower_check"] = tower_check(b, tasks[0], cfg, dev, a.batch_size)
    _log("tower:", res["tower_check"])
    b.close()
    return res


def tower_check(b: Any, task: str, cfg: dict[str, int], dev: Any, batch: int) -> dict[str, Any]:
    import numpy as np
    import torch

    try:
        from lines.clip.model import build_image_encoder
        from lines.io import load_state_dict

        sd = load_state_dict(b.ck.pretrained)
        ref = build_image_encoder(sd, heads=cfg["heads"]).to(dev).eval()
    except Exception as e:  # noqa: BLE001 - open_clip missing: say so
        return {"open_clip": f"not available ({type(e).__name__}: {e})"}
    b.load(b.base)
    from lines.clip.evaluate import cached_split

    c = cached_split(b.split(task, "test"), b.preprocess, b.a.cache_dir)
    x = torch.from_numpy(np.array(c.images[:batch])).to(dev)
    x = b.preprocess.normalize(x)
    out: dict[str, Any] = {}
    for name, amp in (("fp32", False), ("bf16", dev.type == "cuda")):
        if name == "bf16" and not amp:
            continue
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=amp):
            y1, y2 = b.encoder(x), ref(x)
        out[f"{name}_equal"] = bool(torch.equal(y1, y2))
        out[f"{name}_max_abs_diff"] = float((y1.float() - y2.float()).abs().max())
    for name, m in (("lines", b.encoder), ("open_clip", ref)):
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
            for _ in range(2):
                m(x)
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(10):
                m(x)
            _sync(dev)
        out[f"{name}_forward_images_per_s"] = round(10 * len(x) / (time.perf_counter() - t0), 1)
    return out


# ----------------------------------------------------------------------------------------------
# Report


def report(path: Path) -> str:
    r = json.loads(Path(path).read_text())
    p = r["platform"]
    lines = [
        f"# CLIP evaluation benchmark: {r['machine']} ({p.get('gpu') or 'CPU'})",
        "",
        f"Generated by `python benchmarks/bench_clip_eval.py report {Path(path).name}` from a run "
        f"on {r['created']}: {r['model']} with random weights, {r['data']['images']} synthetic "
        f"{r['data']['jpeg_px']}×{r['data']['jpeg_px']} JPEGs in 8 sets sized like the reference "
        f"validation splits of suite 8; batch {r['batch_size']}, {r['workers']} decoding workers; "
        f"torch {p['torch']}, {p['cpus']} CPUs. See the script's docstring for what is measured.",
        "",
        "| evaluation | images | seconds | images/s |",
        "|---|---|---|---|",
    ]
    nc = r["no_cache"]
    lines.append(
        f"| no cache (decode + resize + crop every time, {nc['workers']} workers), {nc['task']} "
        f"| {nc['images']} | {nc['s']} | {nc['images_per_s']} |"
    )
    cb = r["cache_build"]
    lines.append(
        f"| first cached pass (decode once, write uint8 cache), 8 sets | {cb['images']} | {cb['s']} | {cb['images_per_s']} |"
    )
    for key, label in (
        ("cached_bf16", "cached, bf16 autocast (CUDA default)"),
        ("cached_fp32", "cached, fp32"),
        ("cached_auto", "cached"),
    ):
        if key in r:
            c = r[key]
            lines.append(f"| {label}, 8 sets | {c['images']} | {c['s']} | {c['images_per_s']} |")
    s = r["beta_sweep"]
    lines += [
        "",
        f"One 8-task β sweep ({s['method']}, {s['num_betas']} β values, {s['images_per_beta']} "
        "images per β):",
        "",
        "| build τ_MTL once | per β (apply + evaluate 8 sets) | apply alone | whole sweep |",
        "|---|---|---|---|",
        f"| {s['build_task_vector_s']} s | {s['per_beta_mean_s']} s | "
        f"{sum(x['apply_s'] for x in s['per_beta']) / len(s['per_beta']):.4f} s | {s['total_s']} s |",
    ]
    cached = r.get("cached_bf16") or r.get("cached_auto")
    if cached:
        lines += [
            "",
            f"The cache makes an evaluation pass {cached['images_per_s'] / nc['images_per_s']:.0f}× "
            "faster than decoding the JPEGs every time (the no-cache figure includes starting the "
            "DataLoader workers and moving decoded batches through shared memory), so a sweep "
            "pays the decoding once, in its first pass. A β costs "
            f"{s['per_beta_mean_s']} s, of which the scaled add θ_0 + λ(ℓ)τ on the device is "
            f"{1000 * sum(x['apply_s'] for x in s['per_beta']) / len(s['per_beta']):.1f} ms; "
            f"the rest is evaluating {s['images_per_beta']} images.",
        ]
    tc = r.get("tower_check", {})
    if "lines_forward_images_per_s" in tc and cached:
        lines.append(
            f"Cached evaluation runs at {100 * cached['images_per_s'] / tc['lines_forward_images_per_s']:.0f}% of "
            f"the bare forward pass on a batch already on the GPU ({tc['lines_forward_images_per_s']} "
            "images/s): the rest is reading the memory-mapped uint8 batches and copying them to "
            "the device (pageable memory, one batch at a time)."
        )
    if "open_clip" in tc:
        lines += ["", f"Tower check: open_clip {tc['open_clip']}."]
    elif tc:
        eq = ", ".join(
            f"{k.split('_')[0]} {'bit-identical' if tc[k] else 'max |Δ| ' + format(tc[k.replace('equal', 'max_abs_diff')], '.1e')}"
            for k in tc
            if k.endswith("_equal")
        )
        lines += [
            "",
            f"Tower check (`lines.clip.tower` against open_clip's tower, one batch): {eq}; "
            f"forward {tc['lines_forward_images_per_s']} vs {tc['open_clip_forward_images_per_s']} images/s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--machine", default="h100")
    p.add_argument("--model", default="ViT-B-32", choices=["ViT-B-32", "tiny"])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the reference val sizes")
    p.add_argument("--image_px", type=int, default=256, help="side of the synthetic JPEGs")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--workdir", default="/tmp/lines-clip-bench")
    p.add_argument("--out", default=str(HERE / "results"))
    p = sub.add_parser("report")
    p.add_argument("json")
    a = ap.parse_args(argv)
    return run_and_report(a, "clip_eval", run, report)


def run_and_report(
    a: argparse.Namespace,
    stem: str,
    run_fn: Callable[[argparse.Namespace, Callable[[dict], Any]], dict],
    report_fn: Callable[[Path], str],
) -> int:
    """``report`` (a results file rendered to markdown beside it) or a run whose results are
    saved as it goes into ``<out>/<stem>_<machine>.json``, then rendered."""
    if a.cmd == "report":
        md = report_fn(Path(a.json))
        Path(a.json).with_suffix(".md").write_text(md)
        print(md)
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"{stem}_{a.machine}.json"
    res = run_fn(a, lambda r: f.write_text(json.dumps(r, indent=2) + "\n"))
    f.write_text(json.dumps(res, indent=2) + "\n")
    f.with_suffix(".md").write_text(report_fn(f))
    print(f.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
