"""``step``: the first k blocks at α, the others at α + β — "freeze" the k shallowest blocks at
the shrunk scale (the layer-freezing view of which layers should stay near θ_0)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lines.errors import LinesError
from lines.schedules.base import BlockNorms, Schedule


@dataclasses.dataclass(frozen=True)
class Step(Schedule):
    name: ClassVar[str] = "step"
    summary: ClassVar[str] = "first k blocks at α, the rest at α + β"
    reference: ClassVar[str] = "layer freezing; cf. Lee et al., ICLR 2023 (surgical fine-tuning)"

    k: int = dataclasses.field(default=1, metadata={"help": "number of shallow blocks at α, ≥ 0"})

    def validate(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            raise LinesError(f"step k out of range: {self.k!r} (must be an integer ≥ 0)")

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        if self.k > num_blocks:
            raise LinesError(f"step k = {self.k} exceeds the number of blocks L = {num_blocks}")
        return 0.0 if ell <= self.k else 1.0


SCHEDULE = Step
