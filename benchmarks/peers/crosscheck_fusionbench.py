"""Cross-check the data-free merges (Iso-C, Iso-CTS, TSV-M, WUDI) against FusionBench's own code.

Both sides see the same small random checkpoints (a pretrained one and N fine-tuned ones with
matrices, vectors and a rectangular embedding). Ours: ``lines.engine.build_task_vector`` (the
streaming engine, the path every merge takes). Theirs: FusionBench 0.2.33's functions
(``iso_c``, ``iso_cts``, ``compute_and_sum_svd_mem_reduction``, ``wudi_merging`` with 30 Adam
steps) on the task vectors, run in its own
virtual environment (``bash benchmarks/peers/setup.sh fusionbench``). Prints and writes the
maximum absolute difference per method and tensor kind.

    .venv/bin/python benchmarks/peers/crosscheck_fusionbench.py \
        [--out benchmarks/results/crosscheck_fusionbench.json]
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
PEER_PY = HERE / ".venv-fusionbench" / "bin" / "python"
SHAPES = {  # LLaMA-style names (the family is detected from them)
    "model.embed_tokens.weight": (40, 16),
    "model.layers.0.self_attn.q_proj.weight": (64, 48),
    "model.layers.0.self_attn.q_proj.bias": (64,),
    "model.layers.1.mlp.up_proj.weight": (48, 96),
    "model.layers.1.input_layernorm.weight": (48,),
}
# ours -> (FusionBench function, keyword arguments)
METHODS = {
    "iso_c": ("iso_c", {}),
    "iso_cts": ("iso_cts", {"common_space_fraction": 0.8}),
    "tsv_m": ("tsv_m", {}),
    "wudi": ("wudi_merging", {"iterations": 30}),
}

PEER_SCRIPT = r"""
import contextlib, io, json, sys
import torch
from safetensors.torch import load_file, save_file
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
    compute_and_sum_svd_mem_reduction,
)
from fusion_bench.method.wudi.wudi import wudi_merging
import fusion_bench
root, n = sys.argv[1], int(sys.argv[2])
pre = load_file(f"{root}/pretrained.safetensors")
tvs = []
for i in range(n):
    ft = load_file(f"{root}/ft_{i}.safetensors")
    tvs.append({k: ft[k] - pre[k] for k in pre})  # fusion_bench's state_dict_sub
with contextlib.redirect_stdout(io.StringIO()):
    out = {
        "iso_c": iso_c(tvs, accelerator="cpu"),
        "iso_cts": iso_cts(tvs, common_space_fraction=0.8, accelerator="cpu"),
        "tsv_m": compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu"),
        "wudi": {k: v.detach() for k, v in wudi_merging(tvs, accelerator="cpu", iter_num=30).items()},
    }
for name, sd in out.items():
    save_file({k: v.contiguous() for k, v in sd.items()}, f"{root}/peer_{name}.safetensors")
print(json.dumps({"fusion_bench": getattr(fusion_bench, "__version__", "0.2.33"),
                  "torch": torch.__version__}))
"""


def make_checkpoints(root: Path, n: int, seed: int) -> None:
    from lines.io import save_state_dict

    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    save_state_dict(root / "pretrained.safetensors", base)
    for i in range(n):
        save_state_dict(
            root / f"ft_{i}.safetensors",
            {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()},
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not PEER_PY.exists():
        print(f"missing {PEER_PY}: run 'bash benchmarks/peers/setup.sh fusionbench' first")
        return 2
    from lines.engine import build_task_vector
    from lines.io import load_state_dict
    from lines.merging import make_method

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_checkpoints(root, a.n, a.seed)
        fts = [root / f"ft_{i}.safetensors" for i in range(a.n)]
        peer = subprocess.run(
            [str(PEER_PY), "-c", PEER_SCRIPT, str(root), str(a.n)],
            capture_output=True,
            text=True,
            check=True,
        )
        versions = json.loads(peer.stdout.strip().splitlines()[-1])
        rows = []
        for ours, (_, params) in METHODS.items():
            out = root / f"ours_{ours}.safetensors"
            build_task_vector(
                root / "pretrained.safetensors",
                fts,
                make_method(ours, **params),
                out,
                progress=False,
                hash_inputs=False,
            )
            mine = load_state_dict(out)
            theirs = load_state_dict(root / f"peer_{ours}.safetensors")
            for key in SHAPES:
                d = (mine[key] - theirs[key]).abs().max().item()
                scale = theirs[key].abs().max().item()
                rows.append(
                    {
                        "method": ours,
                        "tensor": key,
                        "shape": list(SHAPES[key]),
                        "max_abs_diff": d,
                        "max_abs_value": scale,
                        "bit_identical": bool(torch.equal(mine[key], theirs[key])),
                    }
                )
    print(f"{'method':8} {'tensor':40} {'max |Δ|':>10} {'max |τ|':>9}  identical")
    for r in rows:
        print(
            f"{r['method']:8} {r['tensor']:40} {r['max_abs_diff']:10.2e} "
            f"{r['max_abs_value']:9.3f}  {r['bit_identical']}"
        )
    result = {
        "command": "python benchmarks/peers/crosscheck_fusionbench.py",
        "machine": platform.processor() or platform.machine(),
        "n": a.n,
        "seed": a.seed,
        "ours": {"torch": torch.__version__, "python": platform.python_version()},
        "peer": versions,
        "rows": rows,
    }
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    worst = max(r["max_abs_diff"] / max(r["max_abs_value"], 1e-12) for r in rows)
    print(f"worst relative difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
