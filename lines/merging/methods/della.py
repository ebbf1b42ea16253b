from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, check_fraction, stacked


def della_probs(t: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Keep probabilities from magnitude ranks within each row (MAGPRUNE): p rises linearly from
    density − ε (smallest |τ|) to density + ε (largest), as mergekit's ``della_magprune``."""
    m = t.abs() if t.dim() >= 2 else t.abs().unsqueeze(0)
    ranks = m.argsort(dim=1).argsort(dim=1).float() + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)  # a one-entry row gives NaN → clamp keeps NaN
    norm = torch.nan_to_num(norm, nan=0.0)
    return ((density - epsilon) + norm * 2 * epsilon).reshape(t.shape)


@dataclasses.dataclass
class Della(MergeMethod):
    """DELLA-Merging (Deep et al., 2024): MAGPRUNE drops each entry with a probability that falls
    with its magnitude rank (keep p ∈ [density − ε, density + ε]), rescales the survivors to the
    task vector's L1 norm (per tensor), then elects signs by the summed values and averages the
    entries that agree (as mergekit's ``della``: consensus 'sum', normalize, rescale). Masks are
    drawn from a generator seeded by (seed, model, crc32(key)): reproducible on any device."""

    name: ClassVar[str] = "della"
    param_keys: ClassVar[dict[str, str]] = {"seed": "seed"}  # the run's common seed
    summary: ClassVar[str] = "magnitude-ranked random drop, L1 rescale, sign election, mean"
    reference: ClassVar[str] = "Deep et al., 2024, arXiv 2406.11617"

    density: float = dataclasses.field(
        default=0.7, metadata={"help": "mean keep probability, in (0, 1]"}
    )
    epsilon: float = dataclasses.field(
        default=0.15, metadata={"help": "spread of keep probabilities, density ± epsilon in (0, 1)"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the random masks"})

    def validate(self) -> None:
        check_fraction("density", self.density)
        if self.density < 1 and not (
            0 < self.density - self.epsilon and self.density + self.epsilon < 1
        ):
            raise LinesError(
                f"della density ± epsilon must lie in (0, 1), got {self.density} ± {self.epsilon}"
            )

    def _sparse(self, key: str, i: int, t: torch.Tensor) -> torch.Tensor:
        if self.density >= 1:
            return t
        g = torch.Generator(device="cpu")
        g.manual_seed((self.seed * 1_000_003 + i * 7_919 + zlib.crc32(key.encode())) % (2**63))
        p = della_probs(t, self.density, self.epsilon)
        keep = torch.rand(p.shape, generator=g).to(t.device) < p
        masked = t * keep
        before, after = t.abs().sum(), masked.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return masked
        return masked * (before / after)

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.stack([self._sparse(key, i, t) for i, t in enumerate(stacked(taus))])
        majority = torch.where(x.sum(0) >= 0, 1.0, -1.0).to(x.dtype)
        agree = (x.sign() == majority).to(x.dtype)
        divisor = agree.sum(0)
        divisor[divisor == 0] = 1
        return (x * agree).sum(0) / divisor


METHOD = Della
