from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import MergeMethod, stacked
from lines.merging.spectral import is_matrix, sequential_sum


@dataclasses.dataclass
class IsoC(MergeMethod):
    """Iso-C (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
    Task-Specific Subspaces", ICML 2025): per weight matrix, the SVD of Σ τ_i with every singular
    value replaced by their mean (an isotropic spectrum), U·mean(σ)·Vᴴ; other tensors are
    averaged. The scale comes after (uniform λ or LiNeS), as the paper's α."""

    name: ClassVar[str] = "iso_c"
    summary: ClassVar[str] = "SVD of the summed task matrices with a flattened (isotropic) spectrum"
    reference: ClassVar[str] = "Marczak et al., ICML 2025, arXiv 2502.04959"

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        n = x.shape[0]
        mean = sequential_sum(x) / n
        if not is_matrix(x):
            return mean
        # (Σ/N)·N as the reference computes it (not Σ itself: the rounding differs)
        u, s, vh = torch.linalg.svd(mean * n, full_matrices=False)
        return torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), vh))


METHOD = IsoC
