"""``piecewise``: K knot values f_1..f_K at evenly spaced depths 0, 1/(K−1), …, 1, linear in
between: any monotone or non-monotone profile, e.g. ``piecewise:knots=0/0/0.5/1``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lines.errors import LinesError
from lines.schedules.base import BlockNorms, Schedule, check_finite, depth


@dataclasses.dataclass(frozen=True)
class Piecewise(Schedule):
    name: ClassVar[str] = "piecewise"
    summary: ClassVar[str] = "f linear between K knots at evenly spaced depths"
    reference: ClassVar[str] = "a free-form generalisation of Wang et al., ICLR 2025, Eq. 2"

    knots: tuple[float, ...] = dataclasses.field(
        default=(0.0, 1.0), metadata={"help": "K ≥ 2 knot values f at depths 0..1, '/'-separated"}
    )

    def validate(self) -> None:
        if len(self.knots) < 2:
            raise LinesError(f"piecewise needs at least 2 knots, got {len(self.knots)}")
        for v in self.knots:
            check_finite("piecewise knot", v)

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        x = depth(ell, num_blocks) * (len(self.knots) - 1)
        i = min(int(x), len(self.knots) - 2)
        t = x - i
        return self.knots[i] + t * (self.knots[i + 1] - self.knots[i])


SCHEDULE = Piecewise
