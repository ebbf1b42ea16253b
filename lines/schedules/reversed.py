"""``reversed``: the mirror of LiNeS, deep blocks closest to θ_0: λ(ℓ) = α + β(L−ℓ)/(L−1).
The control of the paper's Figure 1 (downscaling deep layers instead of shallow ones)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lines.scaling import lines_lambdas
from lines.schedules.base import BlockNorms, Schedule, depth


@dataclasses.dataclass(frozen=True)
class Reversed(Schedule):
    name: ClassVar[str] = "reversed"
    summary: ClassVar[str] = "α + β(L−ℓ)/(L−1): deep blocks closest to θ_0 (Figure 1's control)"
    reference: ClassVar[str] = "Wang et al., ICLR 2025, Fig. 1"

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        return 1.0 - depth(ell, num_blocks) if num_blocks > 1 else 0.0

    def lambdas(
        self, num_blocks: int, alpha: float, beta: float, norms: BlockNorms | None = None
    ) -> list[float]:
        # LiNeS's λ(ℓ) read backwards: the exact mirror of ``linear``, bit for bit.
        return list(reversed(lines_lambdas(num_blocks, alpha, beta)))


SCHEDULE = Reversed
