from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, check_fraction


@dataclasses.dataclass
class Dare(MergeMethod):
    """DARE (Yu et al., "Language Models are Super Mario", ICML 2024): drop each task-vector entry
    with probability ``drop_rate`` and rescale the survivors by 1/(1 − drop_rate), then sum (or
    average). The random mask of tensor ``key`` of model i is drawn from a generator seeded by
    (seed, i, crc32(key)), so a merge is reproducible whatever the tensor order or device."""

    name: ClassVar[str] = "dare"
    param_keys: ClassVar[dict[str, str]] = {"seed": "seed"}  # the run's common seed
    summary: ClassVar[str] = "random drop and rescale, then sum"
    reference: ClassVar[str] = "Yu et al., ICML 2024, arXiv 2311.03099"

    drop_rate: float = dataclasses.field(
        default=0.9, metadata={"help": "probability of dropping an entry, in [0, 1)"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the random masks"})
    mode: Literal["sum", "mean"] = dataclasses.field(
        default="sum", metadata={"help": "sum or mean of the rescaled task vectors"}
    )

    def validate(self) -> None:
        check_fraction("drop_rate", self.drop_rate, low_open=False, high_closed=False)
        if self.mode not in ("sum", "mean"):
            raise LinesError(f"dare mode must be 'sum' or 'mean', got '{self.mode}'")

    def keep_mask(self, key: str, model_idx: int, shape: torch.Size) -> torch.Tensor:
        g = torch.Generator(device="cpu")
        g.manual_seed(
            (self.seed * 1_000_003 + model_idx * 7_919 + zlib.crc32(key.encode())) % (2**63)
        )
        return torch.rand(shape, generator=g) >= self.drop_rate

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        scale = 1.0 / (1.0 - self.drop_rate)
        out = torch.zeros_like(taus[0])
        for i, t in enumerate(taus):
            out += t * self.keep_mask(key, i, t.shape).to(t.device) * scale
        return out / len(taus) if self.mode == "mean" else out


METHOD = Dare
