from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod


@dataclasses.dataclass
class RewardedSoup(MergeMethod):
    """Rewarded soups (Ramé et al., NeurIPS 2023): θ = θ_SFT + Σ_i w_i τ_i with w on the simplex
    (w_i ≥ 0, Σ w_i = 1); θ_SFT is the shared (supervised fine-tuned) starting point."""

    name: ClassVar[str] = "rewarded_soup"
    elementwise: ClassVar[bool] = True
    summary: ClassVar[str] = "θ_SFT + Σ w_i τ_i, weights on the simplex"
    reference: ClassVar[str] = "Ramé et al., NeurIPS 2023, arXiv 2306.04488"

    weights: tuple[float, ...] = dataclasses.field(
        default=(), metadata={"help": "one weight per fine-tuned model, ≥ 0, summing to 1"}
    )

    def validate(self) -> None:
        w = tuple(float(x) for x in self.weights)
        self.weights = w
        if not w:
            raise LinesError(
                "rewarded_soup needs --weights (one per fine-tuned model, summing to 1)"
            )
        if any(x < 0 or not math.isfinite(x) for x in w):
            raise LinesError(f"rewarded_soup weights out of range: {list(w)} (each must be ≥ 0)")
        if abs(sum(w) - 1.0) > 1e-6:
            raise LinesError(f"rewarded_soup weights must sum to 1, got {sum(w):.6g}")

    def setup(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        if len(self.weights) != num_models:
            raise LinesError(
                f"rewarded_soup has {len(self.weights)} weights for {num_models} fine-tuned models"
            )

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros_like(taus[0])
        for w, t in zip(self.weights, taus, strict=True):
            out += w * t
        return out


METHOD = RewardedSoup
