"""``sigmoid``: a smooth step, f(x) = (σ((x−c)/w) − σ(−c/w)) / (σ((1−c)/w) − σ(−c/w)) with
x = (ℓ−1)/(L−1): rescaled so the first block gets α and the last α + β exactly."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from lines.errors import LinesError
from lines.schedules.base import BlockNorms, Schedule, check_finite, depth


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclasses.dataclass(frozen=True)
class Sigmoid(Schedule):
    name: ClassVar[str] = "sigmoid"
    summary: ClassVar[str] = "smooth step centred at depth c with width w"
    reference: ClassVar[str] = "a smooth form of 'step'"

    center: float = dataclasses.field(default=0.5, metadata={"help": "centre c in [0, 1]"})
    width: float = dataclasses.field(default=0.1, metadata={"help": "width w > 0"})

    def validate(self) -> None:
        check_finite("sigmoid center", self.center)
        check_finite("sigmoid width", self.width)
        if not 0.0 <= self.center <= 1.0:
            raise LinesError(f"sigmoid center out of range: {self.center} (must be in [0, 1])")
        if self.width <= 0:
            raise LinesError(f"sigmoid width out of range: {self.width} (must be > 0)")

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        lo = _sig(-self.center / self.width)
        hi = _sig((1.0 - self.center) / self.width)
        x = depth(ell, num_blocks)
        return (_sig((x - self.center) / self.width) - lo) / (hi - lo)


SCHEDULE = Sigmoid
