"""The flatten-and-stack baseline: the reference implementation's algorithm (task_vectors /
ties-merging / LiNeS repositories), written out so it can be timed on the same inputs.

Every checkpoint is loaded whole, flattened into one vector and stacked into an N×P matrix; TIES
thresholds are the per-row ``kthvalue`` of |M| (the reference's ``topk_values_mask``), the sign is
``sign(M.sum(0))`` with zeros set to the majority sign (``resolve_sign``), and the merge is the
disjoint mean (``disjoint_merge``). LiNeS scales the merged vector per block
(``.resblocks.{i}.`` → block i+1, everything else block 1) with α = (1/N)‖τ_sum‖₁/‖τ_MTL‖₁.

Two deliberate deviations, neither of which changes the result:
- the stack is filled row by row into a preallocated matrix (what ``torch.vstack`` returns, without
  holding the list of N vectors as well), and masks are applied row by row in place, so memory is
  about N+3 models instead of the reference's 2N+ (a fairer, faster baseline);
- the two L1 norms are accumulated in float64 as this project does (the reference's float32
  ``torch.norm`` is measurably off at 88M entries, which would make the outputs incomparable).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

_BLOCK = re.compile(r"\.resblocks\.(\d+)\.")


def block_of(key: str) -> int:
    m = _BLOCK.search(key)
    return int(m.group(1)) + 1 if m else 1


def read_layout(path: Path) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    with safe_open(str(path), framework="pt") as f:
        out = []
        for k in f.keys():
            sl = f.get_slice(k)
            out.append((k, tuple(sl.get_shape()), _dtype(sl.get_dtype())))
    return out


def _dtype(name: str) -> torch.dtype:
    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(
        name, torch.float32
    )


def merge(
    pretrained: Path,
    finetuned: list[Path],
    method: str,
    beta: float,
    out: Path,
    device: str = "cpu",
    density: float = 0.2,
) -> dict:
    """θ = θ_0 + λ(ℓ)·τ_MTL written to ``out``; returns α and, for TIES, the thresholds."""
    dev = torch.device(device)
    ptm = load_file(str(pretrained))
    keys = list(ptm)
    shapes = {k: ptm[k].shape for k in keys}
    dtypes = {k: ptm[k].dtype for k in keys}
    flat_ptm = torch.cat([ptm[k].reshape(-1).float() for k in keys]).to(dev)
    del ptm
    n, p = len(finetuned), flat_ptm.numel()
    m = torch.empty(n, p, device=dev)  # = torch.vstack([state_dict_to_vector(sd) for sd in fts])
    for i, f in enumerate(finetuned):
        sd = load_file(str(f))
        if dev.type == "cpu":
            torch.cat([sd[k].reshape(-1).float() for k in keys], out=m[i])
        else:
            m[i] = torch.cat([sd[k].reshape(-1).float() for k in keys]).to(dev)
        del sd
    m -= flat_ptm  # task vectors τ_i = θ_i − θ_0

    tv_sum = m.sum(0)
    norm_sum = float(tv_sum.abs().sum(dtype=torch.float64))
    info: dict = {}
    if method == "ta":
        merged = tv_sum
    elif method == "ties":
        del tv_sum
        k = p - int(p * density)  # topk_values_mask: keep the top `density` of each row
        kth = [float(m[i].abs().kthvalue(k).values) for i in range(n)]
        for i in range(n):  # M * (|M| >= kth), row by row
            m[i] *= m[i].abs() >= kth[i]
        sign = torch.sign(m.sum(0))  # resolve_sign
        majority = torch.sign(sign.sum())
        sign[sign == 0] = majority
        counts = torch.zeros(p, device=dev)
        for i in range(n):  # disjoint_merge, mean
            m[i] *= torch.where(sign > 0, m[i] > 0, m[i] < 0)
            counts += m[i] != 0
        merged = m.sum(0) / counts.clamp(min=1)
        info["thresholds"] = kth
    else:
        raise ValueError(method)
    del m
    norm_mtl = float(merged.abs().sum(dtype=torch.float64))
    alpha = norm_sum / norm_mtl / n
    nblocks = max(block_of(k) for k in keys)
    theta = {}
    off = 0
    for k in keys:
        numel = 1
        for s in shapes[k]:
            numel *= s
        lam = alpha + beta * (block_of(k) - 1) / (nblocks - 1)
        t = flat_ptm[off : off + numel] + lam * merged[off : off + numel]
        theta[k] = t.reshape(shapes[k]).to(dtypes[k]).cpu()
        off += numel
    save_file(theta, str(out), metadata={"format": "pt"})
    info["alpha"] = alpha
    return info
