from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, check_fraction, disjoint_mean_stacked, stacked
from lines.merging.sparsify import MagnitudeTrimmer, TrimScope


@dataclasses.dataclass
class Ties(MergeMethod):
    """TIES-merging (Yadav et al., "Resolving Interference When Merging Models", NeurIPS 2023).

    Trim: keep each task vector's entries with |τ| ≥ its (d − ⌊d·density⌋)-th smallest magnitude,
    over the whole task vector (``scope='global'``, the paper and reference, computed exactly by a
    streaming radix select) or per tensor. Elect: sign of the summed trimmed values; where that
    sum is exactly 0 the global majority sign sign(Σ signs) is used, as in the reference.
    Merge: mean of the trimmed entries that agree with the elected sign (disjoint mean).
    The reference keeps the top 20% (density 0.2)."""

    name: ClassVar[str] = "ties"
    summary: ClassVar[str] = "trim, elect sign, disjoint mean"
    reference: ClassVar[str] = "Yadav et al., NeurIPS 2023, arXiv 2306.01708"

    density: float = dataclasses.field(
        default=0.2, metadata={"help": "fraction of each task vector kept, in (0, 1]"}
    )
    scope: TrimScope = dataclasses.field(
        default="global",
        metadata={"help": "top-k over the whole task vector (global) or per tensor"},
    )

    def validate(self) -> None:
        check_fraction("density", self.density)
        if self.scope not in ("global", "per_tensor"):
            raise LinesError(f"ties scope must be 'global' or 'per_tensor', got '{self.scope}'")

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        """A global threshold is a scalar known before the merge pass, so each entry is then
        merged on its own; a per-tensor top-k needs the whole tensor (unless nothing is trimmed)."""
        return self.scope == "global" or self.density >= 1

    @property
    def stats_passes(self) -> int:  # type: ignore[override]
        return MagnitudeTrimmer(self.density, self.scope).passes

    @property
    def stats_sample(self) -> int:  # type: ignore[override]
        return MagnitudeTrimmer(self.density, self.scope).sample_size

    def needs_pass(self, pass_idx: int) -> bool:
        return self._trim.needs_pass(pass_idx)

    def setup(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        self._trim = MagnitudeTrimmer(self.density, self.scope)
        self._trim.begin(num_models, total_entries, device)
        self._sign_sum: int | torch.Tensor = 0
        self._ambiguous: list[str] = []
        self._pending: list[tuple[str, torch.Tensor]] = []  # GPU: flags read at the fix-up
        self._majority: int | None = None

    def observe(self, pass_idx: int, key: str, taus: Sequence[torch.Tensor]) -> None:
        self._trim.observe(pass_idx, taus)

    def end_pass(self, pass_idx: int) -> None:
        self._trim.end_pass(pass_idx)

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._trim.apply_stacked(stacked(taus))  # trimmed (N, …), a new tensor
        raw = torch.sign(x.sum(0))
        zero = raw == 0
        first = self._majority is None
        majority = 1.0 if first else float(self._majority)  # type: ignore[arg-type]
        sign = torch.where(zero, torch.full_like(raw, majority), raw)
        out, count = disjoint_mean_stacked(x, sign, with_count=True)
        if first:
            # First merge pass: accumulate the global majority; on exact ties (a zero sum with
            # non-zero entries) the result depends on it, so remember the key for a fix-up.
            # Count in int64: a float32 sum of more than 2^24 signs rounds and can flip the sign.
            # A zero sum of non-zero entries has entries of both signs, so with the provisional
            # majority +1 it is a zero-sum entry that kept something (no N× pass, no indexing).
            # On a GPU both stay on the device until the fix-up (no synchronisation per slice).
            signs = raw.sum(dtype=torch.int64)
            tie = (zero & (count > 0)).any()
            if tie.is_cuda:
                self._sign_sum = self._sign_sum + signs
                self._pending.append((key, tie))
            else:
                self._sign_sum += int(signs)
                if bool(tie):
                    self._ambiguous.append(key)
        return out

    def fixup_keys(self) -> list[str]:
        if self._pending:
            flags = torch.stack([t for _, t in self._pending]).cpu().tolist()
            self._ambiguous += [k for (k, _), f in zip(self._pending, flags, strict=True) if f]
            self._pending = []
        self._sign_sum = int(self._sign_sum)
        self._majority = 1 if self._sign_sum > 0 else (-1 if self._sign_sum < 0 else 0)
        # Provisional merges used +1; only a non-positive majority changes those entries.
        return self._ambiguous if self._majority <= 0 else []

    def thresholds(self) -> list[float]:
        return self._trim.thresholds()


METHOD = Ties
