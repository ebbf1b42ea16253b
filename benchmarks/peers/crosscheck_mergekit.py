"""Cross-check Breadcrumbs and DELLA against mergekit's own code (mergekit 0.1.5, in its own
virtual environment: ``bash benchmarks/peers/setup.sh mergekit``).

- Breadcrumbs: mergekit's ``breadcrumbs`` is Σ_i magnitude_outliers(τ_i, density, gamma) with no
  rescaling and no sign election; its ``magnitude_outliers`` is called on the same task vectors,
  including a tensor too small for one outlier (gamma·numel < 1).
- DELLA: mergekit draws its masks from torch's global generator in its own task order, ours
  from a generator seeded per (seed, model, tensor), so the random masks cannot agree bit for
  bit; with density 1 (no drop) both reduce to the same sign election ('sum') and disjoint mean,
  which is compared exactly.

    .venv/bin/python benchmarks/peers/crosscheck_mergekit.py [--out benchmarks/results/crosscheck_mergekit.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEER_PY = HERE / ".venv-mergekit" / "bin" / "python"
SHAPES = {"big.weight": (64, 48), "big.bias": (256,), "small.bias": (40,)}
DENSITY, GAMMA = 0.8, 0.02

PEER_SCRIPT = r"""
import json, sys
import torch
from safetensors.torch import load_file, save_file
from mergekit.sparsify import magnitude_outliers
from mergekit.merge_methods.generalized_task_arithmetic import get_mask, ConsensusMethod
root, density, gamma = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
tvs = load_file(f"{root}/tvs.safetensors")
n = len({k.split("/")[0] for k in tvs})
keys = sorted({k.split("/")[1] for k in tvs})
out_b, out_d = {}, {}
for key in keys:
    deltas = torch.stack([tvs[f"{i}/{key}"] for i in range(n)])
    out_b[key] = sum(magnitude_outliers(d, density=density, gamma=gamma) for d in deltas)
    mask = get_mask(deltas, method=ConsensusMethod.sum, mask_dtype=deltas.dtype)
    mixed = (deltas * mask).sum(dim=0)
    divisor = mask.sum(dim=0)
    divisor[divisor == 0] = 1
    out_d[key] = mixed / divisor
save_file(out_b, f"{root}/peer_breadcrumbs.safetensors")
save_file(out_d, f"{root}/peer_della.safetensors")
import importlib.metadata as md
print(json.dumps({"mergekit": md.version("mergekit"), "torch": torch.__version__}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not PEER_PY.exists():
        print(f"missing {PEER_PY}: run 'bash benchmarks/peers/setup.sh mergekit' first")
        return 2
    from safetensors.torch import load_file, save_file

    from lines.merging import make_method
    from lines.merging.base import TaskVectors

    g = torch.Generator().manual_seed(a.seed)
    tvs = {k: torch.randn(a.n, *s, generator=g) for k, s in SHAPES.items()}
    ours = {
        "breadcrumbs": make_method("breadcrumbs", density=DENSITY, gamma=GAMMA),
        "della": make_method("della", density=1.0),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        flat = {f"{i}/{k}": v[i].contiguous() for k, v in tvs.items() for i in range(a.n)}
        save_file(flat, str(root / "tvs.safetensors"))
        peer = subprocess.run(
            [str(PEER_PY), "-c", PEER_SCRIPT, str(root), str(DENSITY), str(GAMMA)],
            capture_output=True,
            text=True,
            check=True,
        )
        versions = json.loads(peer.stdout.strip().splitlines()[-1])
        for name, method in ours.items():
            method.begin(a.n, 0, "cpu")
            theirs = load_file(str(root / f"peer_{name}.safetensors"))
            for key, x in tvs.items():
                mine = method.merge_tensor(key, TaskVectors(x))
                rows.append(
                    {
                        "method": name,
                        "tensor": key,
                        "numel": x[0].numel(),
                        "max_abs_diff": (mine - theirs[key]).abs().max().item(),
                        "bit_identical": bool(torch.equal(mine, theirs[key])),
                        "note": "gamma·numel < 1: no outlier dropped"
                        if name == "breadcrumbs" and x[0].numel() * GAMMA < 1
                        else "",
                    }
                )
    print(f"{'method':12} {'tensor':12} {'numel':>6} {'max |Δ|':>10}  identical  note")
    for r in rows:
        print(
            f"{r['method']:12} {r['tensor']:12} {r['numel']:6d} {r['max_abs_diff']:10.2e}  "
            f"{str(r['bit_identical']):9}  {r['note']}"
        )
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "command": "python benchmarks/peers/crosscheck_mergekit.py",
                    "machine": platform.processor() or platform.machine(),
                    "density": DENSITY,
                    "gamma": GAMMA,
                    "ours": {"torch": torch.__version__},
                    "peer": versions,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
