"""``linear``: LiNeS itself (Wang et al., ICLR 2025, Eq. 2), λ(ℓ) = α + β(ℓ−1)/(L−1)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lines.scaling import lines_lambdas
from lines.schedules.base import BlockNorms, Schedule, depth


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
    name: ClassVar[str] = "linear"
    summary: ClassVar[str] = "LiNeS: α + β(ℓ−1)/(L−1), shallow blocks closest to θ_0 (the default)"
    reference: ClassVar[str] = "Wang et al., ICLR 2025, Eq. 2"

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        return depth(ell, num_blocks)

    def lambdas(
        self, num_blocks: int, alpha: float, beta: float, norms: BlockNorms | None = None
    ) -> list[float]:
        # The exact expression of lines_lambdas (β(ℓ−1) first, then /(L−1)): bit for bit.
        return lines_lambdas(num_blocks, alpha, beta)


SCHEDULE = Linear
