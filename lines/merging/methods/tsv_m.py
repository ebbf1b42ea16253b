from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import MergeMethod, stacked
from lines.merging.spectral import is_matrix, running_mean


@dataclasses.dataclass
class TsvM(MergeMethod):
    """TSV-Merge (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model
    Merging", CVPR 2025): per weight matrix, keep each τ_i's top 1/N of singular triplets, stack
    them, decorrelate the stacked left and right singular vectors (their polar factors, i.e.
    Procrustes orthogonalisation) and recombine with the kept singular values; other tensors are
    averaged."""

    name: ClassVar[str] = "tsv_m"
    summary: ClassVar[str] = "task singular vectors: top 1/N per task, decorrelated, recombined"
    reference: ClassVar[str] = "Gargiulo et al., CVPR 2025, arXiv 2412.00081"

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        if not is_matrix(x):
            return running_mean(x)
        n = x.shape[0]
        sum_u = sum_s = sum_vh = None
        for i in range(n):
            u, s, vh = torch.linalg.svd(x[i], full_matrices=False)
            if sum_u is None:
                sum_u, sum_s, sum_vh = (
                    torch.zeros_like(u),
                    torch.zeros_like(s),
                    torch.zeros_like(vh),
                )
            k = int(s.shape[0] * (1 / n))
            sl = slice(i * k, (i + 1) * k)
            sum_u[:, sl], sum_s[sl], sum_vh[sl, :] = u[:, :k], s[:k], vh[:k, :]
        # (U_u·Vᴴ_u)·diag(σ)·(U_v·Vᴴ_v), the polar factors of the stacks, in the reference's
        # one five-matrix product (its evaluation order decides the rounding)
        uu, _, vhu = torch.linalg.svd(sum_u, full_matrices=False)
        uv, _, vhv = torch.linalg.svd(sum_vh, full_matrices=False)
        return torch.linalg.multi_dot((uu, vhu, torch.diag(sum_s), uv, vhv))


METHOD = TsvM
