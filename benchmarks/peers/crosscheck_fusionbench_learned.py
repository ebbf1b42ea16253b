"""Cross-check the learned baselines' building blocks against FusionBench's own code (issue 17).

Both sides see the same small model (an MLP 8 → 16 → 4), a pretrained state dict, N fine-tuned
ones, N diagonal Fishers and a batch of inputs. Ours: ``lines.protocol.learned`` —
``fisher_merge`` (θ = Σ (F_t + ε) θ_t / Σ (F_t + ε)), ``combine`` (θ_0 + Σ_t λ[t, ℓ] τ_t, the
layer-wise AdaMerging / aTLAS model) and ``entropy`` (AdaMerging's objective), with the loss's
gradient in λ. Theirs, in FusionBench 0.2.33's own environment (``bash benchmarks/peers/setup.sh
fusionbench``): ``merging_with_fisher_weights`` (``normalize_fisher_weight`` off and on: on — its
default — rescales each model's Fisher by its global norm first, which ours does not),
``LayerWiseMergedModel.merge_weights`` and ``entropy_loss``. Prints and writes the maximum
differences.

    .venv/bin/python benchmarks/peers/crosscheck_fusionbench_learned.py \
        [--out benchmarks/results/crosscheck_fusionbench_learned.json]
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

PEER_SCRIPT = r"""
import json, sys
import torch
from torch import nn
from safetensors.torch import load_file, save_file
from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
from fusion_bench.models.wrappers.layer_wise_fusion import LayerWiseMergedModel
from fusion_bench.method.adamerging.entropy_loss import entropy_loss
root, n = sys.argv[1], int(sys.argv[2])
mlp = lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
pre = load_file(f"{root}/pretrained.safetensors")
fts = [load_file(f"{root}/ft_{i}.safetensors") for i in range(n)]
fis = [load_file(f"{root}/fisher_{i}.safetensors") for i in range(n)]
x = load_file(f"{root}/batch.safetensors")["x"]
lam = load_file(f"{root}/lambda.safetensors")["lam"]
out = {}
for norm in (False, True):
    m = merging_with_fisher_weights({k: [ft[k] for ft in fts] for k in pre}, fis,
                                    torch.ones(n), normalize_fisher_weight=norm,
                                    minimal_fisher_weight=1e-6)
    save_file({k: v.contiguous() for k, v in m.items()}, f"{root}/peer_fisher_norm{int(norm)}.safetensors")
pm = mlp(); pm.load_state_dict(pre)
fms = []
for ft in fts:
    f = mlp(); f.load_state_dict(ft); fms.append(f)
model = LayerWiseMergedModel(lam.clone(), pm, fms, clamp_weights=False)
merged = model.merge_weights()
loss = entropy_loss(torch.func.functional_call(pm, merged, (x,)))
loss.backward()
save_file({k: v.detach().contiguous() for k, v in merged.items()}, f"{root}/peer_combined.safetensors")
save_file({"loss": loss.detach().reshape(1), "grad": model.merge_weight.grad.contiguous()},
          f"{root}/peer_entropy.safetensors")
import fusion_bench
print(json.dumps({"fusion_bench": getattr(fusion_bench, "__version__", "0.2.33"), "torch": torch.__version__}))
"""


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not PEER_PY.exists():
        print(f"missing {PEER_PY}: run 'bash benchmarks/peers/setup.sh fusionbench' first")
        return 2
    from safetensors.torch import load_file, save_file

    from lines.protocol.learned import coefficient_groups, combine, entropy, fisher_merge

    torch.manual_seed(a.seed)
    pre = {k: v.detach().clone() for k, v in mlp().state_dict().items()}
    fts = [{k: v + 0.1 * torch.randn_like(v) for k, v in pre.items()} for _ in range(a.n)]
    fis = [{k: torch.rand_like(v) ** 3 for k, v in pre.items()} for _ in range(a.n)]
    x = torch.randn(32, 8)
    keys = list(pre)
    lam = torch.rand(a.n, len(keys))  # one λ per model and parameter tensor (layer-wise)
    rows: list[dict] = []

    def row(check: str, mine: torch.Tensor, theirs: torch.Tensor, note: str = "") -> None:
        d = (mine - theirs).abs().max().item()
        rows.append(
            {
                "check": check,
                "max_abs_diff": d,
                "max_abs_value": theirs.abs().max().item(),
                "bit_identical": bool(torch.equal(mine, theirs)),
                "note": note,
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_file(pre, str(root / "pretrained.safetensors"))
        for i in range(a.n):
            save_file(fts[i], str(root / f"ft_{i}.safetensors"))
            save_file(fis[i], str(root / f"fisher_{i}.safetensors"))
        save_file({"x": x}, str(root / "batch.safetensors"))
        save_file({"lam": lam}, str(root / "lambda.safetensors"))
        peer = subprocess.run(
            [str(PEER_PY), "-c", PEER_SCRIPT, str(root), str(a.n)],
            capture_output=True,
            text=True,
        )
        if peer.returncode != 0:
            print(peer.stderr[-3000:])
            return 1
        versions = json.loads(peer.stdout.strip().splitlines()[-1])
        mine = fisher_merge([lambda f=f: f for f in fts], [lambda f=f: f for f in fis], floor=1e-6)
        for norm, note in (
            (0, "normalize_fisher_weight=False: the same formula"),
            (
                1,
                "FusionBench's default rescales each model's Fisher by 1/‖F_t‖ first; ours does not",
            ),
        ):
            theirs = load_file(str(root / f"peer_fisher_norm{norm}.safetensors"))
            for k in keys:
                row(f"fisher_merge[{k}] vs normalize={bool(norm)}", mine[k], theirs[k], note)
        group, _ = coefficient_groups(keys, "tensor")
        coefs = lam.clone().requires_grad_(True)
        merged = combine(pre, [{k: ft[k] - pre[k] for k in keys} for ft in fts], coefs, group)
        theirs = load_file(str(root / "peer_combined.safetensors"))
        for k in keys:
            row(f"combine[{k}] (layer-wise θ)", merged[k].detach(), theirs[k])
        loss = entropy(torch.func.functional_call(mlp(), merged, (x,)))
        loss.backward()
        pe = load_file(str(root / "peer_entropy.safetensors"))
        eps_note = "ours: log-softmax; FusionBench: log(p + 1e-8)"
        row("entropy loss", loss.detach().reshape(1), pe["loss"], eps_note)
        row("∂ entropy / ∂ λ", coefs.grad, pe["grad"], eps_note)
    print(f"{'check':52} {'max |Δ|':>10} {'max |v|':>9}  identical")
    for r in rows:
        print(
            f"{r['check'][:52]:52} {r['max_abs_diff']:10.2e} {r['max_abs_value']:9.3f}  "
            f"{r['bit_identical']}"
        )
    result = {
        "command": "python benchmarks/peers/crosscheck_fusionbench_learned.py",
        "machine": platform.processor() or platform.machine(),
        "n": a.n,
        "seed": a.seed,
        "ours": {"torch": torch.__version__, "python": platform.python_version()},
        "peer": versions,
        "not_compared": "AdaMerging's clamp: FusionBench clamps λ to [0, 1] inside each forward "
        "(the raw parameter may leave the range, with zero gradient there); ours projects λ onto "
        "[0, 1] after each Adam step. Equal at any λ inside [0, 1] (the values compared here).",
        "rows": rows,
    }
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
