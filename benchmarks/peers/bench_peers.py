#!/usr/bin/env python
"""Merge speed and memory side by side with mergekit and FusionBench (issue 13, part 4).

    bash benchmarks/peers/setup.sh                  # the peers, each in its own virtual env
    .venv/bin/python benchmarks/peers/bench_peers.py [--runs 2] [--rss-cap-gb 18]
    .venv/bin/python benchmarks/peers/bench_peers.py --tiny --out /tmp/peers.json   # smoke
    .venv/bin/python benchmarks/peers/bench_peers.py --report benchmarks/results/peers_llama_cpu.json

The same LLaMA-shaped checkpoints for everyone (``benchmarks/bench_llama_memory.py``: 271M float32
parameters, vocab 32,000, hidden 1,024, 16 layers; θ_0 and N = 4 fine-tuned, 1.08 GB each), in
the page cache, given to mergekit and FusionBench as Hugging Face folders (a ``config.json`` and a
link to the same file). Each merge runs as its own process, whole: load, merge, write the output.
Recorded: wall time, peak RSS of that process (its VmHWM, polled), and the largest
difference of its output from ours with the number of entries that differ. A process whose RSS
passes ``--rss-cap-gb`` is killed and reported as such (FusionBench's global TIES stacks and sorts
every task vector at once).

Cases, with what each peer runs (λ = 0.3; LiNeS α = 0.3, β = 0.5; TIES density 0.2, λ = 1):

- ``ta``: ``lines merge --method task_arithmetic --scale λ``; mergekit ``task_arithmetic`` with
  weight λ per model, ``normalize: false``; FusionBench ``TaskArithmeticAlgorithm(scaling_factor=λ)``.
- ``ta_lines``: ``--lines-alpha α --lines-beta β``; mergekit ``weight: [α, α + β]`` per model, a
  gradient over the 16 layers (mergekit gives embeddings, the final norm and the head the first
  value, as the reference's block policy does); FusionBench has no layer scaling.
- ``ties_per_tensor``: ``--method ties --scope per_tensor``; mergekit ``ties`` (weight 1, density
  0.2, ``normalize: true``: the disjoint mean).
- ``ties_global``: ``--method ties --scope global``; FusionBench ``TiesMergingAlgorithm``
  (threshold 20 %, ``merge_func: mean``), the reference's global top-k.

Ours runs with ``--no-hash`` (the peers hash nothing). Results: ``benchmarks/results/peers_llama_cpu.json``.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

import bench_llama_memory as llama  # noqa: E402

PEERS = {"mergekit": HERE / ".venv-mergekit", "fusionbench": HERE / ".venv-fusionbench"}
LAMBDA, ALPHA, BETA, DENSITY = 0.3, 0.3, 0.5, 0.2

FUSIONBENCH_SCRIPT = r"""
import sys, torch
from safetensors.torch import save_file
from fusion_bench.modelpool import CausalLMPool
case, out, pre, *fts = sys.argv[1:]
torch.set_grad_enabled(False)
models = {"_pretrained_": pre, **{f"ft_{i}": d for i, d in enumerate(fts)}}
pool = CausalLMPool(models, tokenizer=None, model_kwargs={"dtype": torch.float32})
if case == "ta":
    from fusion_bench.method import TaskArithmeticAlgorithm
    merged = TaskArithmeticAlgorithm(scaling_factor=LAMBDA).run(pool)
else:
    from fusion_bench.method import TiesMergingAlgorithm
    merged = TiesMergingAlgorithm(scaling_factor=1.0, threshold=DENSITY * 100, remove_keys=[],
                                  merge_func="mean").run(pool)
save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, out)
""".replace("LAMBDA", repr(LAMBDA)).replace("DENSITY", repr(DENSITY))

# What differs by design, per (case, peer), shown beside the measured differences.
SEMANTICS = {
    ("ta", "mergekit"): "θ_0 + Σ λ·τ_i against θ_0 + λ·Σ τ_i: rounding of the sum's order only",
    ("ta", "fusionbench"): "the same operations in the same order",
    ("ta_lines", "mergekit"): "per-layer weights α + β·i/15 (gradient) against LiNeS λ(ℓ) on Σ τ_i",
    ("ties_per_tensor", "mergekit"): (
        "mergekit keeps exactly k entries per tensor (argsort) where the reference keeps every "
        "|τ| ≥ the k-th value (ties kept); on an exact zero sum mergekit elects +, the reference "
        "the majority sign of the whole task vector"
    ),
    ("ties_global", "fusionbench"): "the reference's code: same threshold, election and mean",
}


def llama_config(tiny: bool) -> dict:
    v, h, ff, n = (llama.V, llama.H, llama.FF, llama.L) if not tiny else (64, 32, 48, 4)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": v,
        "hidden_size": h,
        "intermediate_size": ff,
        "num_hidden_layers": n,
        "num_attention_heads": 16 if not tiny else 4,
        "num_key_value_heads": 16 if not tiny else 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def hf_folders(files: list[Path], config: dict) -> list[Path]:
    """A Hugging Face folder per checkpoint: config.json and a link to the same weights."""
    out = []
    for f in files:
        d = f.parent / "hf" / f.stem
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=1))
        link = d / "model.safetensors"
        if not link.is_symlink():
            link.symlink_to(f.resolve())
        out.append(d)
    return out


def run_child(argv: list[str], cap_gb: float, timeout: float, log: Path) -> dict:
    """Run one merge: wall time, peak RSS (the child's VmHWM, polled every 50 ms: ``ru_maxrss``
    from ``wait4`` would include this parent's own peak, which Linux carries over fork), and
    whether it was killed (over the memory cap or the time limit)."""
    t0 = time.perf_counter()
    hwm = 0.0
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT)
        killed = None
        while True:
            rss, peak = _status_gb(proc.pid)
            hwm = max(hwm, peak)
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if killed is None and rss > cap_gb:
                killed = f"killed at {rss:.1f} GB RSS (cap {cap_gb:g} GB)"
                proc.kill()
            elif killed is None and time.perf_counter() - t0 > timeout:
                killed = f"killed after {timeout:g} s"
                proc.kill()
            time.sleep(0.05)
    res = {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_gb": round(hwm, 3)}
    code = os.waitstatus_to_exitcode(status)
    if killed:
        res["killed"] = killed
    elif code != 0:
        res["error"] = f"exit {code}: " + log.read_text()[-600:]
    return res


def _status_gb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a running process in GB; zeros once it has exited."""
    rss = hwm = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1e6
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1e6
    except OSError:
        pass
    return rss, hwm


def compare(ours: Path, theirs: Path) -> dict:
    """Largest |Δ| between two merged checkpoints and how many entries differ, tensor by tensor."""
    import torch

    from lines.io import open_checkpoint

    a, b = open_checkpoint(ours), open_checkpoint(theirs)
    missing = sorted(set(a.keys()) ^ set(b.keys()))
    worst, differ, total = 0.0, 0, 0
    for k in a.keys():
        if k not in b:
            continue
        x, y = a.get(k).float(), b.get(k).float()
        d = (x - y).abs()
        worst = max(worst, float(d.max())) if d.numel() else worst
        differ += int(torch.count_nonzero(x != y))
        total += x.numel()
    return {
        "max_abs_diff": worst,
        "entries_differ": differ,
        "entries": total,
        "keys_only_one": missing[:5],
    }


def explain_ties(files: list[Path], ours: Path, theirs: Path, density: float) -> dict:
    """Sort the entries where mergekit's per-tensor TIES differs from ours by cause: an entry
    where some task's |τ| equals its tensor's k-th largest magnitude (mergekit keeps exactly k by
    argsort; the reference keeps every tie), or one whose trimmed sum is exactly zero (mergekit
    elects +, the reference the task vectors' majority sign). What is in neither is unexplained."""
    import torch

    from lines.io import open_checkpoint

    base, fts = open_checkpoint(files[0]), [open_checkpoint(f) for f in files[1:]]
    a, b = open_checkpoint(ours), open_checkpoint(theirs)
    out = {"differ": 0, "at_threshold_ties": 0, "at_zero_sum": 0, "unexplained": 0}
    for key in a.keys():
        diff = (a.get(key) != b.get(key)).reshape(-1)
        if not diff.any():
            continue
        b0 = base.get(key).float()
        tau = torch.stack([ck.get(key).float() - b0 for ck in fts]).reshape(len(fts), -1)
        d = tau.shape[1]
        thr = tau.abs().kthvalue(d - int(d * density), dim=1, keepdim=True).values
        at_thr = (tau.abs() == thr).any(0)
        kept = torch.where(tau.abs() >= thr, tau, torch.zeros_like(tau))
        zero = (kept.sum(0) == 0) & (kept != 0).any(0) & ~at_thr
        out["differ"] += int(diff.sum())
        out["at_threshold_ties"] += int((diff & at_thr).sum())
        out["at_zero_sum"] += int((diff & zero).sum())
        out["unexplained"] += int((diff & ~at_thr & ~zero).sum())
    return out


def mergekit_config(case: str, pre: Path, fts: list[Path]) -> dict:
    if case == "ta":
        params, glob = {"weight": LAMBDA}, {"normalize": False}
    elif case == "ta_lines":
        params, glob = {"weight": [ALPHA, ALPHA + BETA]}, {"normalize": False}
    else:  # ties_per_tensor
        params, glob = {"weight": 1.0, "density": DENSITY}, {"normalize": True, "int8_mask": False}
    method = "ties" if case == "ties_per_tensor" else "task_arithmetic"
    return {
        "merge_method": method,
        "base_model": str(pre),
        "models": [{"model": str(f), "parameters": params} for f in fts],
        "parameters": glob,
        "dtype": "float32",
    }


OURS = {
    "ta": ["--method", "task_arithmetic", "--scale", str(LAMBDA)],
    "ta_lines": [
        "--method",
        "task_arithmetic",
        "--lines-alpha",
        str(ALPHA),
        "--lines-beta",
        str(BETA),
    ],
    "ties_per_tensor": ["--method", "ties", "--scope", "per_tensor", "--density", str(DENSITY)],
    "ties_global": ["--method", "ties", "--scope", "global", "--density", str(DENSITY)],
}
PEER_CASES = {
    "ta": ["mergekit", "fusionbench"],
    "ta_lines": ["mergekit"],
    "ties_per_tensor": ["mergekit"],
    "ties_global": ["fusionbench"],
}


def peer_argv(peer: str, case: str, tmp: Path, folders: list[Path], out: Path) -> list[str]:
    py = str(PEERS[peer] / "bin" / "python")
    if peer == "mergekit":
        cfg = tmp / f"mergekit_{case}.json"  # YAML is a superset of JSON
        cfg.write_text(json.dumps(mergekit_config(case, folders[0], folders[1:])))
        exe = str(PEERS[peer] / "bin" / "mergekit-yaml")
        return [exe, str(cfg), str(out), "--no-copy-tokenizer", "--lazy-unpickle", "--quiet"]
    fb_case = "ta" if case == "ta" else "ties"
    return [py, "-c", FUSIONBENCH_SCRIPT, fb_case, str(out), *map(str, folders)]


def report(res: dict) -> str:
    """A markdown table of a results file: per case and implementation, the range over runs."""
    names = {"lines": "lines", "mergekit": "mergekit", "fusionbench": "FusionBench"}
    out = [
        "| case | implementation | wall s | peak RSS GB | vs lines: max abs diff (entries that differ) |",
        "|---|---|---|---|---|",
    ]
    for case in OURS:
        for impl in ["lines", *PEER_CASES[case]]:
            rows = [r for r in res["rows"] if r["case"] == case and r["impl"] == impl]
            if not rows:
                continue

            def rng(vals: list[float], fmt: str) -> str:
                lo, hi = format(min(vals), fmt), format(max(vals), fmt)
                return lo if lo == hi else f"{lo}–{hi}"

            wall = rng([r["wall_s"] for r in rows], ".1f")
            rss = rng([r["peak_rss_gb"] for r in rows], ".2f")
            killed = [r["killed"] for r in rows if "killed" in r]
            if killed:
                wall, rss = (
                    f"killed after {wall}",
                    killed[0].split(" (")[0].replace("killed at ", "> "),
                )
            vs = rows[-1].get("vs_lines")
            diff = (
                "-"
                if impl == "lines"
                else "not comparable (killed)"
                if killed
                else (f"{vs['max_abs_diff']:.1e} ({vs['entries_differ']:,} of {vs['entries']:,})")
            )
            if vs and "causes" in vs:
                c = vs["causes"]
                diff += (
                    f"; {c['at_threshold_ties']} at threshold ties, {c['at_zero_sum']} at zero sums, "
                    f"{c['unexplained']} unexplained"
                )
            out.append(f"| {case} | {names[impl]} | {wall} | {rss} | {diff} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / "data" / "llama")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cases", nargs="+", default=list(OURS), choices=list(OURS))
    ap.add_argument("--rss-cap-gb", type=float, default=18.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--tiny", action="store_true", help="a 4-layer toy model (smoke test)")
    ap.add_argument("--report", type=Path, default=None, help="print a results file as markdown")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers_llama_cpu.json"
    )
    a = ap.parse_args()
    if a.report is not None:
        print(report(json.loads(a.report.read_text())))
        return 0
    missing = [p for p, v in PEERS.items() if not (v / "bin" / "python").exists()]
    if missing:
        print(f"missing peer environments {missing}: run 'bash benchmarks/peers/setup.sh' first")
        return 2
    if a.tiny:
        llama.V, llama.H, llama.FF, llama.L = 64, 32, 48, 4
        a.data_dir = a.data_dir.with_name("llama_tiny")
    files = llama.make(a.data_dir, a.n)
    folders = hf_folders(files, llama_config(a.tiny))
    for f in files:  # into the page cache for everyone
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    versions = {
        p: subprocess.run(
            [
                str(v / "bin" / "python"),
                "-c",
                f"import importlib.metadata as m; print(m.version('{'mergekit' if p == 'mergekit' else 'fusion-bench'}'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for p, v in PEERS.items()
    }
    rows = []
    with tempfile.TemporaryDirectory(dir=a.data_dir) as t:
        tmp = Path(t)
        for run in range(a.runs):
            for case in a.cases:
                ours_out = tmp / f"ours_{case}.safetensors"
                argv = [sys.executable, "-m", "lines.cli", "merge", "--pretrained", str(files[0])]
                argv += ["--finetuned", *map(str, files[1:]), *OURS[case]]
                argv += ["--out", str(ours_out), "--overwrite", "--no-progress", "--no-hash"]
                r = run_child(argv, a.rss_cap_gb, a.timeout, tmp / "log.txt")
                rows.append({"run": run + 1, "case": case, "impl": "lines", **r})
                print(json.dumps(rows[-1]), flush=True)
                for peer in PEER_CASES[case]:
                    out = (
                        tmp
                        / f"{peer}_{case}"
                        / ("model.safetensors" if peer == "fusionbench" else "")
                    )
                    out.parent.mkdir(parents=True, exist_ok=True)
                    target = out if peer == "fusionbench" else out.parent
                    r = run_child(
                        peer_argv(peer, case, tmp, folders, target),
                        a.rss_cap_gb,
                        a.timeout,
                        tmp / "log.txt",
                    )
                    if "killed" not in r and "error" not in r and ours_out.exists():
                        r["vs_lines"] = compare(ours_out, target)
                        if case == "ties_per_tensor":
                            r["vs_lines"]["causes"] = explain_ties(files, ours_out, target, DENSITY)
                    r["semantics"] = SEMANTICS.get((case, peer), "")
                    rows.append({"run": run + 1, "case": case, "impl": peer, **r})
                    print(json.dumps(rows[-1]), flush=True)
    res = {
        "command": "python benchmarks/peers/bench_peers.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "checkpoint_gb": round(files[0].stat().st_size / 1e9, 3),
        "n": a.n,
        "versions": versions,
        "settings": {
            "lambda": LAMBDA,
            "lines_alpha": ALPHA,
            "lines_beta": BETA,
            "density": DENSITY,
        },
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
