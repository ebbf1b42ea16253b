"""The layer-scaling schedule interface: a rule mapping block ℓ = 1..L to λ(ℓ).

Every schedule has the form λ(ℓ) = α + β·f(ℓ) with a shape f that is 0 at the first block and 1 at
the last (LiNeS, Wang et al., ICLR 2025, Eq. 2, has f(ℓ) = (ℓ−1)/(L−1)), so α keeps its meaning
(the scale of the input-side blocks; the automatic α = (1/N)‖τ_sum‖/‖τ_MTL‖ of Sec. 5) and
single-task editing keeps its form: α = γ, β = 1 − γ. A schedule is a dataclass whose fields are
its parameters (validated in ``validate``), one file in ``lines/schedules/``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from lines.errors import LinesError


@dataclasses.dataclass(frozen=True)
class BlockNorms:
    """Per-block L2 norms of the task vector and of θ_0 (block ℓ at index ℓ−1), for schedules
    set from how far each block moved (``needs_block_norms``)."""

    tau: Sequence[float]
    base: Sequence[float]

    def relative(self) -> list[float]:
        """‖τ_ℓ‖ / ‖θ_0,ℓ‖ per block (0 where θ_0's block is zero)."""
        return [t / b if b > 0 else 0.0 for t, b in zip(self.tau, self.base, strict=True)]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class; subclasses set ``name``, ``summary``, ``reference`` and implement ``shape``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    needs_block_norms: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 - optional hook
        """Raise LinesError for an out-of-range parameter."""

    def shape(self, ell: int, num_blocks: int, norms: BlockNorms | None = None) -> float:
        """f(ℓ) for ℓ = 1..L (0 at the first block and 1 at the last, for the usual shapes)."""
        raise NotImplementedError

    def lambdas(
        self, num_blocks: int, alpha: float, beta: float, norms: BlockNorms | None = None
    ) -> list[float]:
        """λ(ℓ) = α + β·f(ℓ) for ℓ = 1..L."""
        check_coefficients(num_blocks, alpha, beta)
        if self.needs_block_norms and norms is None:
            raise LinesError(f"schedule '{self.name}' needs the per-block norms of τ and θ_0")
        return [
            alpha + beta * self.shape(ell, num_blocks, norms) for ell in range(1, num_blocks + 1)
        ]

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> dict[str, Any]:
        return {"schedule": self.name, "schedule_params": self.params()}

    def spec(self) -> str:
        """``NAME[:k=v,…]``, as ``--schedule`` takes it."""
        p = self.params()
        if not p:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in p.items())


def _fmt(v: object) -> str:
    if isinstance(v, tuple | list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def check_finite(name: str, v: object) -> None:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise LinesError(f"{name} must be a finite number, got {v!r}")


def check_coefficients(num_blocks: int, alpha: float, beta: float) -> None:
    """The checks every schedule shares (those of ``lines.scaling.lines_lambdas``)."""
    if num_blocks < 1:
        raise LinesError(f"number of blocks must be ≥ 1, got {num_blocks}")
    check_finite("alpha", alpha)
    check_finite("beta", beta)
    if beta < 0:
        raise LinesError(f"beta out of range: {beta} (must be ≥ 0; LiNeS grows with depth)")


def depth(ell: int, num_blocks: int) -> float:
    """x = (ℓ−1)/(L−1) ∈ [0, 1]; 0 for a single block."""
    return 0.0 if num_blocks == 1 else (ell - 1) / (num_blocks - 1)
