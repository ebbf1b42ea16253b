from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, check_fraction, stacked
from lines.merging.spectral import is_matrix


@dataclasses.dataclass
class Cart(MergeMethod):
    """CART (Choi et al., "Revisiting Weight Averaging for Model Merging", 2024): centre the task
    vectors on their mean, keep a low-rank part of each centred matrix, add them back:
    τ_MTL = τ̄ + ``low_rank_scale``·Σ_i SVD_k(τ_i − τ̄) with k = ⌈``rank``·min(m, n)⌉, i.e.
    θ = θ_avg + low_rank_scale·Σ_i SVD_k(θ_i − θ_avg). Non-matrix tensors get the average (their centred
    parts sum to zero). Keep the engine's λ at 1 (``--scale 1``) for CART as published; LiNeS
    then rescales the whole merged vector per block."""

    name: ClassVar[str] = "cart"
    summary: ClassVar[str] = "average plus low-rank centred task vectors"
    reference: ClassVar[str] = "Choi et al., 2024, arXiv 2412.12153"

    rank: float = dataclasses.field(
        default=0.12, metadata={"help": "fraction of each matrix's rank kept, in (0, 1]"}
    )
    low_rank_scale: float = dataclasses.field(
        default=1.0, metadata={"help": "coefficient of the low-rank centred parts"}
    )

    def validate(self) -> None:
        check_fraction("rank", self.rank)
        if (
            not isinstance(self.low_rank_scale, int | float)
            or self.low_rank_scale != self.low_rank_scale
        ):
            raise LinesError(f"cart low_rank_scale must be a number, got {self.low_rank_scale!r}")

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        mean = x.mean(0)
        if not is_matrix(x):
            return mean
        k = max(1, math.ceil(self.rank * min(x.shape[1:])))
        u, s, vh = torch.linalg.svd(x - mean, full_matrices=False)  # batched over the N tasks
        low = (u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]
        return mean + self.low_rank_scale * low.sum(0)


METHOD = Cart
