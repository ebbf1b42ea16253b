from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import MergeMethod, check_fraction, stacked
from lines.merging.spectral import is_matrix, polar, running_mean, sequential_sum


@dataclasses.dataclass
class IsoCTS(MergeMethod):
    """Iso-CTS (Marczak et al., ICML 2025): per weight matrix, the top ``common_space_fraction`` of
    the singular directions of Σ τ_i (the common subspace) plus, for each task, the top
    directions of τ_i with the common subspace projected out (an equal share each); the stacked
    directions are orthogonalised (polar factor) and given one isotropic singular value, the
    mean. Other tensors are averaged."""

    name: ClassVar[str] = "iso_cts"
    summary: ClassVar[str] = "common + task-specific singular subspaces, isotropic spectrum"
    reference: ClassVar[str] = "Marczak et al., ICML 2025, arXiv 2502.04959"

    common_space_fraction: float = dataclasses.field(
        default=0.8, metadata={"help": "share of the rank kept for the common subspace, (0, 1]"}
    )

    def validate(self) -> None:
        check_fraction("common_space_fraction", self.common_space_fraction)

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        if not is_matrix(x):
            return running_mean(x)
        n, r = x.shape[0], min(x.shape[1:])
        # The task-specific rank is made divisible by N; the common space takes the rest.
        common = int(r * self.common_space_fraction)
        common = r - round((r - common) / n) * n
        per_task = (r - common) // n
        u, s, vh = torch.linalg.svd(sequential_sum(x), full_matrices=False)
        cu, cs, cvh = u[:, :common], s[:common], vh[:common, :]
        su = torch.zeros_like(u)
        ss = torch.zeros_like(s)
        svh = torch.zeros_like(vh)
        for i in range(n):
            w = x[i]
            ut, st, vt = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)
            sl = slice(i * per_task, (i + 1) * per_task)
            su[:, sl], ss[sl], svh[sl, :] = ut[:, :per_task], st[:per_task], vt[:per_task, :]
        tail = slice(n * per_task, n * per_task + common)
        su[:, tail], ss[tail], svh[tail, :] = cu, cs, cvh
        iso = torch.ones_like(ss) * ss.mean()
        return torch.linalg.multi_dot((polar(su), torch.diag(iso), polar(svh)))


METHOD = IsoCTS
