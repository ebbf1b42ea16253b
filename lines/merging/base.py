"""The merge-method interface, and the small pure primitives methods are composed from.

A method maps N task vectors to one merged task vector τ_MTL, one tensor at a time
(``merge_tensor``). Methods that need whole-vector statistics (TIES's global top-k threshold)
declare ``stats_passes``: the engine streams every tensor through ``observe`` that many times
before merging, so no method ever holds more than one tensor per input.
LiNeS and the uniform coefficient are applied by the engine afterwards: θ = θ_0 + λ(ℓ)·τ_MTL.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from lines.errors import LinesError


@dataclasses.dataclass
class MergeMethod(ABC):
    """Base class. Subclasses are dataclasses whose fields are the method's parameters; each field's
    ``metadata['help']`` documents it and ``validate`` checks ranges (a bad value raises LinesError)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    min_models: ClassVar[int] = 2
    stats_passes: ClassVar[int] = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 - optional hook
        """Raise LinesError for an out-of-range parameter."""

    def begin(
        self, num_models: int, total_entries: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        """Called once before any pass, with N, the number of entries of one whole task vector
        (floating tensors only) and the compute device."""
        if num_models < self.min_models:
            raise LinesError(
                f"method '{self.name}' needs at least {self.min_models} fine-tuned checkpoint(s), "
                f"got {num_models}"
            )
        self.num_models = num_models
        self.setup(num_models, total_entries, device)

    def setup(self, num_models: int, total_entries: int, device: torch.device | str) -> None:  # noqa: B027
        """Per-run state (thresholds, accumulators); called by ``begin``."""

    def observe(self, pass_idx: int, key: str, taus: Sequence[torch.Tensor]) -> None:  # noqa: B027
        """Statistics pass ``pass_idx`` over one tensor's task vectors."""

    def end_pass(self, pass_idx: int) -> None:  # noqa: B027
        """Called after every tensor went through ``observe`` in pass ``pass_idx``."""

    @abstractmethod
    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        """τ_MTL for one tensor from the N task vectors of that tensor (float32)."""

    def fixup_keys(self) -> list[str]:
        """Keys whose merged value depends on a statistic known only after the merge pass; the
        engine merges them again (TIES's global majority sign on exact ties)."""
        return []

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "params": self.params(), "reference": self.reference}


# ----------------------------------------------------------------------------------------------
# Validation helpers


def check_fraction(name: str, v: float, *, low_open: bool = True, high_closed: bool = True) -> None:
    """v in (0, 1] by default."""
    ok = (v > 0 if low_open else v >= 0) and (v <= 1 if high_closed else v < 1)
    if not ok:
        lo = "(0" if low_open else "[0"
        hi = "1]" if high_closed else "1)"
        raise LinesError(f"{name} out of range: {v} (must be in {lo}, {hi})")


# ----------------------------------------------------------------------------------------------
# Primitives (pure, separately tested)


def kth_threshold(abs_values: torch.Tensor, density: float) -> float:
    """The reference TIES threshold of one vector: the (d − ⌊d·density⌋)-th smallest |value|
    (1-indexed); entries ≥ it are kept. ``density == 1`` keeps everything."""
    d = abs_values.numel()
    k = d - int(d * density)
    if k <= 0 or d == 0:
        return float("-inf")
    return float(abs_values.reshape(-1).float().kthvalue(k).values)


def trim(t: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep entries with |t| ≥ threshold (TIES "trim"; magnitude pruning)."""
    return t * (t.abs() >= threshold)


def elect_sign(trimmed: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-entry sign of the summed trimmed values (TIES "elect"); 0 where the sum is 0."""
    return torch.sign(torch.stack(list(trimmed)).sum(0))


def disjoint_mean(trimmed: Sequence[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """Mean over the models whose entry agrees with the elected sign (TIES "disjoint merge").
    Where ``sign`` is 0 the negative entries are selected, as in the reference (where(s>0,t>0,t<0))."""
    stacked = torch.stack(list(trimmed))
    keep = torch.where(sign.unsqueeze(0) > 0, stacked > 0, stacked < 0)
    selected = stacked * keep
    count = (selected != 0).sum(0).clamp(min=1)
    return selected.sum(0) / count


def float_bits(abs_values: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 view of non-negative float32 values."""
    return abs_values.float().contiguous().view(torch.int32)


class RadixSelect:
    """Exact k-th smallest of a stream of non-negative float32 values, in two streaming passes
    over the data, never holding more than one chunk: pass 0 histograms the high 16 bits of the
    (order-preserving) bit pattern, pass 1 histograms the low 16 bits inside the one high bucket
    that holds the k-th value. Equals ``torch.kthvalue`` over the concatenation, ties included."""

    def __init__(self, total: int, k: int, device: torch.device | str = "cpu"):
        self.total, self.k = total, k
        self.trivial = k <= 0 or total == 0
        self.device = torch.device(device)
        self.hi = torch.zeros(1 << 15, dtype=torch.int64, device=self.device)
        self.lo = torch.zeros(1 << 16, dtype=torch.int64, device=self.device)
        self.bucket: int | None = None
        self.rank: int | None = None
        self.value: float | None = float("-inf") if self.trivial else None

    def observe(self, pass_idx: int, abs_values: torch.Tensor) -> None:
        if self.trivial or abs_values.numel() == 0:
            return
        bits = float_bits(abs_values).reshape(-1)
        if pass_idx == 0:
            self.hi += torch.bincount(bits >> 16, minlength=1 << 15)
        else:
            sel = bits[(bits >> 16) == self.bucket]
            if sel.numel():
                self.lo += torch.bincount(sel & 0xFFFF, minlength=1 << 16)

    def end_pass(self, pass_idx: int) -> None:
        if self.trivial:
            return
        if pass_idx == 0:
            cum = torch.cumsum(self.hi, 0)
            b = int(torch.searchsorted(cum, torch.tensor(self.k, device=cum.device)))
            self.bucket = b
            self.rank = self.k - (int(cum[b - 1]) if b > 0 else 0)
        else:
            cum = torch.cumsum(self.lo, 0)
            low = int(torch.searchsorted(cum, torch.tensor(self.rank, device=cum.device)))
            bits = torch.tensor([(self.bucket << 16) | low], dtype=torch.int32)
            self.value = float(bits.view(torch.float32)[0])


def global_k(total: int, density: float) -> int:
    """The rank of the reference threshold within a whole task vector of ``total`` entries."""
    return total - int(total * density)
