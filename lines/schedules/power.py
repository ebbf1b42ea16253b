"""``power``: λ(ℓ) = α + β·((ℓ−1)/(L−1))^p. p = 1 is LiNeS; p > 1 keeps more blocks near θ_0
(the growth concentrates in the last blocks), p < 1 releases them sooner."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lines.errors import LinesError
from lines.schedules.base import BlockNorms, Schedule, check_finite, depth


@dataclasses.dataclass(frozen=True)
class Power(Schedule):
    name: ClassVar[str] = "power"
    summary: ClassVar[str] = "α + β·x^p with x = (ℓ−1)/(L−1)"
    reference: ClassVar[str] = "generalises Wang et al., ICLR 2025, Eq. 2 (p = 1)"

    p: float = dataclasses.field(default=2.0, metadata={"help": "exponent p > 0"})

    def validate(self) -> None:
        check_finite("power p", self.p)
        if self.p <= 0:
            raise LinesError(f"power p out of range: {self.p} (must be > 0)")

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        return depth(ell, num_blocks) ** self.p


SCHEDULE = Power
