#!/usr/bin/env python
"""Merge benchmark: this project's streaming engine against a flatten-and-stack baseline and the
memory-bandwidth bound, on random checkpoints with open_clip ViT-B/32 and ViT-L/14 shapes.

    python benchmarks/bench_merge.py run                    # CPU, default configurations
    python benchmarks/bench_merge.py run --device cuda      # GPU (data still read from disk)
    python benchmarks/bench_merge.py run --configs ViT-B-32:8 --methods ties --impls ours
    python benchmarks/bench_merge.py report                 # rebuild RESULTS.md from results/*.json

What is measured, per (model, N, method, implementation), each in a fresh subprocess:
- wall time of one whole merge, inputs in the page cache (the harness reads every input once
  before each configuration), output written to disk;
- peak memory: the process's peak RSS (VmHWM, the same figure as ru_maxrss without the parent's
  peak that Linux carries over fork+exec) minus its RSS right after the imports (and CUDA
  initialisation), and on a GPU torch.cuda.max_memory_allocated;
- ``ours``: ``lines.engine.merge_checkpoints`` with LiNeS and automatic α (manifest hashing on, as
  the CLI does; on a GPU the inputs are held in device memory when they fit);
  ``ours-nohash``: the same without sha256 of inputs and output; ``ours-readahead`` /
  ``ours-resident``: no hashing, inputs streamed through the read-ahead / held; ``baseline``:
  benchmarks/baseline.py (load every state dict, flatten, stack N×P, per-row kthvalue);
  ``sweep``: build the merged task vector once (``build_task_vector``), then
  ``apply_task_vector`` per β: the time of one more β in a sweep.
- the bound: the (N+1) input checkpoints' bytes divided by the memory bandwidth measured on the
  same machine with one large tensor copy, counting bytes read + bytes written (a copy of S bytes
  moves 2S). On a GPU machine the inputs live in host memory, so the same host figure applies;
  the host-to-device rate is recorded beside it.
- correctness: our TIES output against the baseline's (max |Δθ| and agreement of the kept-entry
  masks θ ≠ θ_0), and the per-model thresholds.

Checkpoints are written once under --data-dir (default benchmarks/data, git-ignored) and reused.
Results go to benchmarks/results/merge-<machine>.json; ``report`` renders every such file into
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_CONFIGS = ["ViT-B-32:8,14,20", "ViT-L-14:8,20"]
BETA = 0.5
DENSITY = 0.2


def _log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _hwm_mb() -> float:
    """Peak RSS of this process (VmHWM). Not ru_maxrss: Linux carries the parent's peak RSS over
    fork+exec into the child's ru_maxrss (the harness itself held 2 GiB for the copy test), while
    VmHWM belongs to the new address space."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


# ---------------------------------------------------------------------------------------------
# One measurement (runs in a fresh subprocess)


def measure_one(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    if a.lib:
        sys.path.insert(0, a.lib)
    import torch

    import lines  # noqa: F401  (torchvision shim)

    cuda = a.device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.ones(1, device="cuda").sum().item()
    import baseline as bl
    from ckpts import paths

    from lines.engine import apply_task_vector, build_task_vector, merge_checkpoints
    from lines.merging import make_method
    from lines.scaling import Scaling

    pre, fts = paths(Path(a.data_dir), a.model, a.n)
    out = Path(a.out)
    base_rss = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res: dict = {"lines_module": lines.__file__}

    def method():
        return (
            make_method("ties", density=DENSITY)
            if a.method == "ties"
            else make_method("task_arithmetic")
        )

    t0 = time.perf_counter()
    if a.impl in ("ours", "ours-nohash", "ours-cpu", "ours-resident", "ours-readahead"):
        m = method()
        man = merge_checkpoints(
            pre,
            fts,
            m,
            Scaling.lines(beta=BETA),
            out,
            device="cpu" if a.impl == "ours-cpu" else a.device,
            progress=False,
            hash_inputs=a.impl == "ours",
            overwrite=True,
            # the default holds the inputs on a GPU when they fit; ours-readahead streams them
            # (no hashing), ours-resident forces holding them
            resident={"ours-resident": True, "ours-readahead": False}.get(a.impl),
        )
        res["alpha"] = man["scaling"]["alpha_value"]
        if a.method == "ties":
            res["thresholds"] = m.thresholds()
    elif a.impl == "baseline":
        res.update(bl.merge(pre, fts, a.method, BETA, out, a.device, DENSITY))
    elif a.impl == "sweep":
        tv = out.with_name(out.stem + ".tau.safetensors")
        build_task_vector(pre, fts, method(), tv, device=a.device, progress=False, overwrite=True)
        res["build_s"] = time.perf_counter() - t0
        per = []
        for beta in (0.3, 0.7, 1.1):
            t1 = time.perf_counter()
            apply_task_vector(
                pre,
                tv,
                Scaling.lines(beta=beta),
                out,
                device=a.device,
                progress=False,
                overwrite=True,
            )
            per.append(time.perf_counter() - t1)
        res["per_beta_s"] = per
        tv.unlink(missing_ok=True)
        tv.with_suffix(".json").unlink(missing_ok=True)
    else:
        raise SystemExit(f"unknown impl {a.impl}")
    if cuda:
        torch.cuda.synchronize()
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = _hwm_mb() - base_rss
    res["base_rss_mb"] = base_rss
    if cuda:
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


# ---------------------------------------------------------------------------------------------
# Machine figures


def bandwidth(device: str) -> dict:
    """Copy bandwidth of one large tensor, counting bytes read + bytes written."""
    import torch

    out: dict = {"convention": "bytes read + bytes written per second of a large tensor copy"}
    size = 1 << 30  # 1 GiB

    def best(fn, reps: int = 5) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    src = torch.rand(size // 4)
    dst = torch.empty_like(src)
    t = best(lambda: dst.copy_(src))
    out["host_copy_GBps"] = 2 * size / t / 1e9
    out["host_threads"] = torch.get_num_threads()
    if device == "cuda":
        g1 = torch.empty(size // 4, device="cuda")
        g2 = torch.empty_like(g1)

        def sync(f):
            def g():
                f()
                torch.cuda.synchronize()

            return g

        out["device_copy_GBps"] = 2 * size / best(sync(lambda: g2.copy_(g1))) / 1e9
        pinned = src.pin_memory()
        # A host-to-device copy reads host memory and writes device memory: bytes counted once
        # on each side, reported as bytes transferred per second.
        out["h2d_pinned_GBps"] = size / best(sync(lambda: g1.copy_(pinned))) / 1e9
        out["h2d_pageable_GBps"] = size / best(sync(lambda: g1.copy_(src))) / 1e9
        del g1, g2, pinned
        torch.cuda.empty_cache()  # leave the GPU's memory to the measured children
    return out


def read_bandwidth(files: list[Path]) -> float:
    """Bytes per second of reading the (cached) input files once with readinto into a reused
    buffer: what any implementation that reads its inputs through read() pays at least."""
    buf = bytearray(64 << 20)
    mv = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(mv):
                total += n
    return total / (time.perf_counter() - t0)


def machine_info(device: str) -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------
# Correctness


def compare(pre: Path, ours: Path, base: Path) -> dict:
    """max |θ_ours − θ_base|, and agreement of the masks θ ≠ θ_0 (entries the merge changed)."""
    sys.path.insert(0, str(ROOT))

    from lines.io import open_checkpoint

    worst, disagree, total, changed = 0.0, 0, 0, 0
    with open_checkpoint(pre) as p, open_checkpoint(ours) as o, open_checkpoint(base) as b:
        for k in p.keys():
            t0, to, tb = p.get(k).float(), o.get(k).float(), b.get(k).float()
            worst = max(worst, float((to - tb).abs().max()))
            mo, mb = to != t0, tb != t0
            disagree += int((mo != mb).sum())
            changed += int(mb.sum())
            total += t0.numel()
    return {
        "max_abs_diff": worst,
        "mask_disagreements": disagree,
        "mask_agreement": 1 - disagree / total,
        "entries": total,
        "changed_entries": changed,
    }


# ---------------------------------------------------------------------------------------------
# Driver


def _child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_one", *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        killed = r.returncode in (-9, 137)
        return {"error": ("killed (out of memory?) " if killed else "") + " | ".join(tail)}
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    import torch
    from ckpts import ensure

    import lines  # noqa: F401

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    data = Path(a.data_dir)
    machine = a.machine or (
        f"{platform.node()}-{a.device}"
        if a.device == "cpu"
        else torch.cuda.get_device_name(0).replace(" ", "-")
    )
    RESULTS.mkdir(exist_ok=True)
    res_path = RESULTS / f"merge-{machine}.json"
    results = json.loads(res_path.read_text()) if res_path.exists() and a.append else {}
    results.setdefault("runs", [])
    results["machine"] = machine
    results["device"] = a.device
    results["info"] = machine_info(a.device)
    results["beta"], results["ties_density"] = BETA, DENSITY
    _log(f"machine {machine}: {results['info']}")
    bw = bandwidth(a.device)
    results["bandwidth"] = bw
    _log(f"bandwidth: {bw}")
    out_dir = data / "out"
    out_dir.mkdir(parents=True, exist_ok=True)

    configs = []
    for c in a.configs:
        model, ns = c.split(":")
        configs += [(model, int(n)) for n in ns.split(",")]
    for model in sorted({m for m, _ in configs}):
        nmax = max(n for m, n in configs if m == model)
        t0 = time.perf_counter()
        ensure(data, model, nmax, log=_log, device=a.device)
        _log(f"{model}: {nmax} checkpoints ready ({time.perf_counter() - t0:.0f} s)")

    def save() -> None:
        res_path.write_text(json.dumps(results, indent=1) + "\n")

    from ckpts import paths

    for model, n in configs:
        pre, fts = paths(data, model, n)
        ckpt_bytes = pre.stat().st_size
        need_bytes = (n + 1) * ckpt_bytes
        for method in a.methods:
            # page cache: read every input once (the measurements are warm-cache runs)
            rbw = read_bandwidth([pre, *fts])
            bound_s = need_bytes / (bw["host_copy_GBps"] * 1e9)
            old = next(
                (
                    r
                    for r in results["runs"]
                    if (r["model"], r["n"], r["method"]) == (model, n, method)
                ),
                {},
            )
            entry = {
                "model": model,
                "n": n,
                "method": method,
                "checkpoint_bytes": ckpt_bytes,
                "input_bytes": need_bytes,
                "bound_s": bound_s,
                "read_once_s": need_bytes / rbw,
                "impls": dict(old.get("impls", {})),
            }
            for k in ("check", "gpu_vs_cpu"):
                if k in old:
                    entry[k] = old[k]
            if "h2d_pinned_GBps" in bw:
                # on a GPU the bytes also cross the host-device link once
                entry["bound_h2d_s"] = need_bytes / (bw["h2d_pinned_GBps"] * 1e9)
                bound_s = max(bound_s, entry["bound_h2d_s"])
                entry["bound_s"] = bound_s
            outs = {}
            for impl in a.impls:
                if impl == "baseline":
                    # the stack (N), θ_0's vector, τ_sum/merged, the output dict, one loaded model
                    est = (n + 4) * ckpt_bytes / 1e9
                    avail = (
                        _mem_available_gb()
                        if a.device == "cpu"
                        else torch.cuda.mem_get_info()[0] / 1e9
                    )
                    if est > 0.92 * avail:
                        entry["impls"][impl] = {
                            "error": f"out of memory (needs ~{est:.1f} GB, "
                            f"{avail:.1f} GB available)"
                        }
                        _log(f"{model} N={n} {method} {impl}: skipped, needs ~{est:.1f} GB")
                        continue
                out = out_dir / f"{model}_{n}_{method}_{impl}.safetensors"
                load0 = _loadavg()
                r = _child(
                    [
                        "--impl",
                        impl,
                        "--method",
                        method,
                        "--model",
                        model,
                        "--n",
                        str(n),
                        "--device",
                        a.device,
                        "--data-dir",
                        str(data),
                        "--out",
                        str(out),
                        *(["--lib", a.lib] if a.lib else []),
                    ],
                    a.timeout,
                )
                r["loadavg_before"], r["loadavg_after"] = load0, _loadavg()
                if "wall_s" in r:
                    r["ratio_to_bound"] = r["wall_s"] / bound_s
                    outs[impl] = out
                entry["impls"][impl] = r
                _log(
                    f"{model} N={n} {method} {impl}: "
                    + (
                        f"{r['wall_s']:.2f} s, peak {r['peak_rss_mb']:.0f} MB RSS"
                        + (f", {r['cuda_peak_mb']:.0f} MB GPU" if "cuda_peak_mb" in r else "")
                        + f" ({r['wall_s'] / bound_s:.1f}x bound {bound_s:.2f} s)"
                        if "wall_s" in r
                        else r["error"]
                    )
                    + f"  load {load0}"
                )
            if "ours" in outs and "ours-cpu" in outs:
                entry["gpu_vs_cpu"] = compare(pre, outs["ours"], outs["ours-cpu"])
                o, c = entry["impls"]["ours"], entry["impls"]["ours-cpu"]
                if "thresholds" in o:
                    entry["gpu_vs_cpu"]["thresholds_equal"] = o["thresholds"] == c["thresholds"]
                entry["gpu_vs_cpu"]["alpha_rel_diff"] = abs(o["alpha"] - c["alpha"]) / c["alpha"]
                _log(f"  gpu vs cpu: {entry['gpu_vs_cpu']}")
            if "ours" in outs and "baseline" in outs:
                entry["check"] = compare(pre, outs["ours"], outs["baseline"])
                o, b = entry["impls"]["ours"], entry["impls"]["baseline"]
                if "thresholds" in o:
                    entry["check"]["thresholds_equal"] = o["thresholds"] == b["thresholds"]
                entry["check"]["alpha_rel_diff"] = abs(o["alpha"] - b["alpha"]) / b["alpha"]
                _log(f"  check: {entry['check']}")
            for f in outs.values():
                f.unlink(missing_ok=True)
                f.with_suffix(".json").unlink(missing_ok=True)
            results["runs"] = [
                r
                for r in results["runs"]
                if (r["model"], r["n"], r["method"]) != (model, n, method)
            ] + [entry]
            save()
    shutil.rmtree(out_dir, ignore_errors=True)
    save()
    _log(f"wrote {res_path}")
    report(a)


# ---------------------------------------------------------------------------------------------
# Report


def _fmt_impl(r: dict | None, key: str = "wall_s") -> str:
    if r is None:
        return "-"
    if "error" in r:
        return r["error"]
    return f"{r[key]:.2f}"


def report(a: argparse.Namespace) -> None:
    lines_: list[str] = [
        "# Merge benchmark results",
        "",
        "Generated by `python benchmarks/bench_merge.py report` from `benchmarks/results/*.json`; "
        "see the docstring of `benchmarks/bench_merge.py` for what is measured. Times are wall "
        "seconds of one whole merge (LiNeS with automatic α, β = 0.5; TIES density 0.2, global "
        "top-k), inputs in the page cache, output written. Peak memory is the growth of RSS over "
        "the post-import baseline (MB); one checkpoint is 351 MB (ViT-B/32) or 1216 MB "
        "(ViT-L/14). *bound* = bytes of the N+1 input checkpoints / measured copy bandwidth "
        "(bytes read + written per second of one large tensor copy); on a GPU machine the larger "
        "of that and the bytes / pinned host-to-device rate. *read once* = the same bytes "
        "through `readinto` from the page cache, one thread. *ours* hashes every input and the "
        "output (sha256 in the manifest), *no-hash* does not; the baseline hashes nothing. "
        "*check*: our TIES output against the baseline's (max |Δθ|, agreement of the masks "
        "θ ≠ θ_0, thresholds equal). Load = the machine's 1-minute load average before the run "
        "(the 2-core CPU is shared with other jobs: compare within a row). See NOTES.md.",
        "",
    ]
    for p in sorted(RESULTS.glob("merge-*.json")):
        res = json.loads(p.read_text())
        if "runs" not in res:
            continue
        info, bw = res.get("info", {}), res.get("bandwidth", {})
        lines_ += [
            f"## {res['machine']} ({res['device']})",
            "",
            f"{info.get('cpu', '?')}, {info.get('cpu_count')} cores, "
            f"{info.get('mem_total_gb')} GB RAM"
            + (f", {info['gpu']}" if "gpu" in info else "")
            + f"; torch {info.get('torch')}.",
            "Copy bandwidth: host "
            f"{bw.get('host_copy_GBps', 0):.1f} GB/s"
            + (
                f", device {bw['device_copy_GBps']:.0f} GB/s, host→device pinned "
                f"{bw['h2d_pinned_GBps']:.1f} GB/s, pageable {bw['h2d_pageable_GBps']:.1f} GB/s"
                if "device_copy_GBps" in bw
                else ""
            )
            + ".",
            "",
            "| model | N | method | bound s | read once s | ours s | ours no-hash s | "
            "baseline s | speed-up (no-hash) | ours / bound | ours peak MB | baseline peak MB | "
            "per-β s | check | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        res["runs"].sort(key=lambda e: (e["model"], e["n"], e["method"]))
        for e in res["runs"]:
            im = e["impls"]
            o, on, b, sw = (
                im.get("ours"),
                im.get("ours-nohash"),
                im.get("baseline"),
                im.get("sweep"),
            )
            speed = (
                f"{b['wall_s'] / o['wall_s']:.1f}×"
                if o and b and "wall_s" in o and "wall_s" in b
                else "-"
            )
            if speed != "-" and on and "wall_s" in on:
                speed += f" ({b['wall_s'] / on['wall_s']:.1f}×)"
            ratio = f"{o['wall_s'] / e['bound_s']:.1f}×" if o and "wall_s" in o else "-"

            def mem(r: dict | None) -> str:
                if not r or "peak_rss_mb" not in r:
                    return "-"
                s = f"{r['peak_rss_mb']:.0f}"
                if "cuda_peak_mb" in r:
                    s += f" (GPU {r['cuda_peak_mb']:.0f})"
                return s

            per = f"{min(sw['per_beta_s']):.2f}" if sw and "per_beta_s" in sw else "-"
            ch = e.get("check")
            check = (
                f"max Δ {ch['max_abs_diff']:.1e}, masks {ch['mask_agreement'] * 100:.4f}% "
                f"({ch['mask_disagreements']} differ)"
                + (", thr =" if ch.get("thresholds_equal") else "")
                if ch
                else "-"
            )
            load = (o or b or {}).get("loadavg_before", [""])
            lines_.append(
                f"| {e['model']} | {e['n']} | {e['method']} | {e['bound_s']:.2f} | "
                f"{e['read_once_s']:.2f} | {_fmt_impl(o)} | {_fmt_impl(on)} | {_fmt_impl(b)} | "
                f"{speed} | {ratio} | {mem(o)} | {mem(b)} | {per} | {check} | "
                f"{load[0] if load else ''} |"
            )
        lines_.append("")
        for e in res["runs"]:
            g = e.get("gpu_vs_cpu")
            if g:
                lines_.append(
                    f"- GPU vs CPU, {e['model']} N={e['n']} {e['method']}: max |Δθ| "
                    f"{g['max_abs_diff']:.1e}, changed-entry masks agree on "
                    f"{g['mask_agreement'] * 100:.5f}% ({g['mask_disagreements']} entries)"
                    + (", thresholds equal" if g.get("thresholds_equal") else "")
                    + f", α rel. diff {g['alpha_rel_diff']:.1e}"
                )
            alt = [
                f"{name} {_fmt_impl(e['impls'][impl])}"
                + (
                    f" (GPU {e['impls'][impl]['cuda_peak_mb']:.0f} MB)"
                    if "cuda_peak_mb" in e["impls"][impl]
                    else ""
                )
                for impl, name in (
                    ("ours-readahead", "read-ahead"),
                    ("ours-resident", "resident forced"),
                )
                if impl in e["impls"]
            ]
            if alt:
                lines_.append(
                    f"- {e['model']} N={e['n']} {e['method']}, no hashing: " + ", ".join(alt)
                )
            sw = e["impls"].get("sweep")
            if sw and "per_beta_s" in sw:
                lines_.append(
                    f"- β sweep, {e['model']} N={e['n']} {e['method']}: build_task_vector "
                    f"{sw['build_s']:.2f} s once, then apply_task_vector "
                    + ", ".join(f"{x:.2f}" for x in sw["per_beta_s"])
                    + " s per β (hashing on)"
                )
        if lines_[-1] != "":
            lines_.append("")
        if res.get("notes"):
            lines_ += [res["notes"], ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines_))
    _log(f"wrote {HERE / 'RESULTS.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    r.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="MODEL:N1,N2,...")
    r.add_argument("--methods", nargs="+", default=["ta", "ties"], choices=["ta", "ties"])
    r.add_argument(
        "--impls",
        nargs="+",
        default=["ours", "baseline"],
        choices=[
            "ours",
            "ours-nohash",
            "ours-cpu",
            "ours-resident",
            "ours-readahead",
            "baseline",
            "sweep",
        ],
    )
    r.add_argument("--machine", default=None, help="results file name (default: host-device)")
    r.add_argument("--data-dir", default=str(HERE / "data"))
    r.add_argument("--timeout", type=float, default=1800)
    r.add_argument("--append", action="store_true", help="keep other runs of the results file")
    r.add_argument("--lib", default=None, help="import 'lines' from this folder (before/after)")
    o = sub.add_parser("_one")
    o.add_argument("--impl", required=True)
    o.add_argument("--method", required=True)
    o.add_argument("--model", required=True)
    o.add_argument("--n", type=int, required=True)
    o.add_argument("--device", default="cpu")
    o.add_argument("--data-dir", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--lib", default=None)
    sub.add_parser("report")
    a = p.parse_args()
    if a.cmd == "_one":
        print(json.dumps(measure_one(a)))
    elif a.cmd == "run":
        run(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
