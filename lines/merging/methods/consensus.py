from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod


def tall_masks(taus: Sequence[torch.Tensor], lam: float | Sequence[float]) -> torch.Tensor:
    """TALL masks (Wang et al. 2024, Eq. 4): m_t = |τ_t| ≥ λ_t·|τ_MTL − τ_t| with τ_MTL = Σ τ_i.
    Returns a bool tensor of shape (N, *tensor shape)."""
    stacked = torch.stack(list(taus))
    total = stacked.sum(0)
    lams = torch.as_tensor(
        [lam] * len(taus) if isinstance(lam, (int, float)) else list(lam),
        dtype=stacked.dtype,
        device=stacked.device,
    ).reshape(-1, *([1] * (stacked.dim() - 1)))
    return stacked.abs() >= lams * (total.unsqueeze(0) - stacked).abs()


@dataclasses.dataclass
class Consensus(MergeMethod):
    """Consensus merging (Wang et al., "Localizing Task Information for Improved Model Merging and
    Compression", ICML 2024): keep the entries of the task-arithmetic sum Σ τ_i on which at least
    ``k`` tasks' TALL masks agree (k = 2 in the reference); drop "selfish" and "catastrophic" ones."""

    name: ClassVar[str] = "consensus"
    elementwise: ClassVar[bool] = True
    param_keys: ClassVar[dict[str, str]] = {"tall_lambda": "tall_lambda"}
    summary: ClassVar[str] = "task arithmetic restricted to entries ≥ k TALL masks agree on"
    reference: ClassVar[str] = "Wang et al., ICML 2024, arXiv 2405.07813"

    k: int = dataclasses.field(
        default=2, metadata={"help": "minimum number of agreeing TALL masks"}
    )
    tall_lambda: float = dataclasses.field(
        default=0.4, metadata={"help": "λ of the TALL masks, m_t = |τ_t| ≥ λ|τ_MTL − τ_t|; > 0"}
    )

    def validate(self) -> None:
        if not isinstance(self.k, int) or self.k < 0:
            raise LinesError(f"consensus k out of range: {self.k} (must be an integer ≥ 0)")
        if not self.tall_lambda > 0:
            raise LinesError(
                f"consensus tall_lambda out of range: {self.tall_lambda} (must be > 0)"
            )

    def setup(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        if self.k > num_models:
            raise LinesError(f"consensus k out of range: {self.k} (must be ≤ N = {num_models})")

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        masks = tall_masks(taus, self.tall_lambda)
        agree = masks.sum(0) >= self.k
        return torch.stack(list(taus)).sum(0) * agree


METHOD = Consensus
