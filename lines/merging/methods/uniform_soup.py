from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import MergeMethod


@dataclasses.dataclass
class UniformSoup(MergeMethod):
    """Uniform model soup (Wortsman et al., "Model soups", ICML 2022): θ = (1/N)Σ θ_i, i.e.
    θ_0 + (1/N)Σ τ_i for models fine-tuned from a shared θ_0 (coefficient 1, or LiNeS)."""

    name: ClassVar[str] = "uniform_soup"
    elementwise: ClassVar[bool] = True
    summary: ClassVar[str] = "average of the fine-tuned weights"
    reference: ClassVar[str] = "Wortsman et al., ICML 2022, arXiv 2203.05482"

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(taus)).mean(0)


METHOD = UniformSoup
