"""``measured``: a data-free schedule set from how far each block moved, r_ℓ = ‖τ_ℓ‖/‖θ_0,ℓ‖
(L2 over the block's floating tensors). f(ℓ) = (r_ℓ − min r)/(max r − min r): the blocks that
moved least stay nearest θ_0, the blocks that moved most keep their update (``invert`` flips it).
What representation studies report — early layers change least in fine-tuning and hold general
features (Yosinski et al., NeurIPS 2014; Neyshabur et al., NeurIPS 2020) — is what LiNeS encodes
by depth; this schedule reads it off the checkpoints instead."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lines.errors import LinesError
from lines.schedules.base import BlockNorms, Schedule


@dataclasses.dataclass(frozen=True)
class Measured(Schedule):
    name: ClassVar[str] = "measured"
    summary: ClassVar[str] = "f from each block's relative change ‖τ_ℓ‖/‖θ_0,ℓ‖, min-max scaled"
    reference: ClassVar[str] = "Yosinski et al., NeurIPS 2014; Neyshabur et al., NeurIPS 2020"
    needs_block_norms: ClassVar[bool] = True

    invert: bool = dataclasses.field(
        default=False, metadata={"help": "keep the blocks that moved least instead"}
    )

    def validate(self) -> None:
        if not isinstance(self.invert, bool):
            raise LinesError(f"measured invert must be true or false, got {self.invert!r}")

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        assert norms is not None
        r = norms.relative()
        if len(r) != num_blocks:
            raise LinesError(f"measured: {len(r)} block norms for L = {num_blocks} blocks")
        lo, hi = min(r), max(r)
        f = 0.0 if hi == lo else (r[ell - 1] - lo) / (hi - lo)
        return 1.0 - f if self.invert else f


SCHEDULE = Measured
