from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, check_fraction, stacked


def outlier_mask(t: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Keep ``density`` of ``t``'s entries by dropping the largest ``gamma`` fraction by |t| and
    then the smallest, as mergekit 0.1.5's ``magnitude_outliers`` (fewer outliers are dropped
    when ``gamma`` + ``density`` leaves no room; the sort order breaks ties the same way)."""
    n = t.numel()
    if density >= 1:
        return torch.ones_like(t, dtype=torch.bool)
    keep_n = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - keep_n - n_top
    if n_bot < 0:  # too many outliers for the density: remove fewer large ones
        n_top += n_bot
        n_bot = 0
    order = torch.sort(t.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=torch.bool, device=t.device)
    mask[order[n_bot : n - n_top]] = True
    return mask.view(t.shape)


@dataclasses.dataclass
class Breadcrumbs(MergeMethod):
    """Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): in every tensor of every task vector,
    drop the largest ``gamma`` fraction of entries (outliers) and the smallest, keeping
    ``density``; then sum the sparse task vectors (task arithmetic). As mergekit's
    ``breadcrumbs`` (no rescaling, no sign election)."""

    name: ClassVar[str] = "breadcrumbs"
    summary: ClassVar[str] = "drop each tensor's outliers and small entries, then sum"
    reference: ClassVar[str] = "Davari & Belilovsky, ECCV 2024, arXiv 2312.06795"

    density: float = dataclasses.field(
        default=0.9, metadata={"help": "fraction of each tensor kept, in (0, 1]"}
    )
    gamma: float = dataclasses.field(
        default=0.01, metadata={"help": "fraction of largest entries dropped, in [0, 1)"}
    )

    def validate(self) -> None:
        check_fraction("density", self.density)
        check_fraction("gamma", self.gamma, low_open=False, high_closed=False)
        if self.gamma + self.density > 1:
            raise LinesError(
                f"breadcrumbs gamma + density must be ≤ 1, got {self.gamma} + {self.density}"
            )

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        out = torch.zeros_like(x[0])
        for t in x:
            out += t * outlier_mask(t, self.density, self.gamma)
        return out


METHOD = Breadcrumbs
