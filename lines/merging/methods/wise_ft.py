from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import MergeMethod, check_fraction


@dataclasses.dataclass
class WiseFT(MergeMethod):
    """WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022):
    θ = (1 − γ)θ_0 + γθ_ft = θ_0 + γτ for one fine-tuned model."""

    name: ClassVar[str] = "wise_ft"
    elementwise: ClassVar[bool] = True
    summary: ClassVar[str] = "weight-space interpolation θ_0 + γτ"
    reference: ClassVar[str] = "Wortsman et al., CVPR 2022, arXiv 2109.01903"
    min_models: ClassVar[int] = 1

    gamma: float = dataclasses.field(
        default=0.5, metadata={"help": "interpolation coefficient γ in [0, 1]"}
    )

    def validate(self) -> None:
        check_fraction("gamma", self.gamma, low_open=False)

    def setup(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        from lines.errors import LinesError

        if num_models != 1:
            raise LinesError(f"wise_ft interpolates one fine-tuned model, got {num_models}")

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        return taus[0] * self.gamma


METHOD = WiseFT
