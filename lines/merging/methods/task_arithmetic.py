from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, stacked


@dataclasses.dataclass
class TaskArithmetic(MergeMethod):
    """Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
    τ_MTL = Σ_i τ_i (``sum``) or (1/N)Σ_i τ_i (``mean``); the uniform coefficient λ (or LiNeS)
    is applied by the engine: θ = θ_0 + λ·τ_MTL."""

    name: ClassVar[str] = "task_arithmetic"
    elementwise: ClassVar[bool] = True
    summary: ClassVar[str] = "sum (or mean) of the task vectors"
    reference: ClassVar[str] = "Ilharco et al., ICLR 2023, arXiv 2212.04089"

    mode: Literal["sum", "mean"] = dataclasses.field(
        default="sum", metadata={"help": "sum or mean of the task vectors"}
    )

    def validate(self) -> None:
        if self.mode not in ("sum", "mean"):
            raise LinesError(f"task_arithmetic mode must be 'sum' or 'mean', got '{self.mode}'")

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        out = stacked(taus).sum(0)
        return out / len(taus) if self.mode == "mean" else out

    def merged_is_sum(self) -> bool:
        return self.mode == "sum"


METHOD = TaskArithmetic
