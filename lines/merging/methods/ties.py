from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import disjoint_mean_stacked, stacked
from lines.merging.sparsify import TrimmedMethod, trimmed_chunks


@dataclasses.dataclass
class Ties(TrimmedMethod):
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

    def setup(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        super().setup(num_models, total_entries, device)
        self._sign_sum: int | torch.Tensor = 0
        self._ambiguous: list[str] = []
        self._pending: list[tuple[str, torch.Tensor]] = []  # GPU: flags read at the fix-up
        self._majority: int | None = None

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        first = self._majority is None
        majority = 1.0 if first else float(self._majority)  # type: ignore[arg-type]
        out = torch.empty(x[0].numel(), dtype=x.dtype, device=x.device)
        signs: int | torch.Tensor = 0
        tie: bool | torch.Tensor = False
        # Chunk by chunk of the flattened entries (a whole tensor arrives with per-tensor scope):
        # every step after the trim is per entry, so the bits are those of the whole tensor.
        for where, t in trimmed_chunks(self._trim, x):
            raw = torch.sign(t.sum(0))
            zero = raw == 0
            sign = torch.where(zero, torch.full_like(raw, majority), raw)
            out[where], count = disjoint_mean_stacked(t, sign, with_count=True, inplace=True)
            if first:
                # First merge pass: accumulate the global majority; on exact ties (a zero sum
                # with non-zero entries) the result depends on it, so remember the key for a
                # fix-up. Count in int64: a float32 sum of more than 2^24 signs rounds and can
                # flip the sign. A zero sum of non-zero entries has entries of both signs, so
                # with the provisional majority +1 it is a zero-sum entry that kept something.
                signs = signs + raw.sum(dtype=torch.int64)
                tie = tie | (zero & (count > 0)).any()
        if first:
            # On a GPU both stay on the device until the fix-up (no synchronisation per slice).
            if isinstance(tie, torch.Tensor) and tie.is_cuda:
                self._sign_sum = self._sign_sum + signs
                self._pending.append((key, tie))
            else:
                self._sign_sum += int(signs)
                if bool(tie):
                    self._ambiguous.append(key)
        return out.view(x.shape[1:])

    def fixup_keys(self) -> list[str]:
        if self._pending:
            flags = torch.stack([t for _, t in self._pending]).cpu().tolist()
            self._ambiguous += [k for (k, _), f in zip(self._pending, flags, strict=True) if f]
            self._pending = []
        self._sign_sum = int(self._sign_sum)
        self._majority = 1 if self._sign_sum > 0 else (-1 if self._sign_sum < 0 else 0)
        # Provisional merges used +1; only a non-positive majority changes those entries.
        return self._ambiguous if self._majority <= 0 else []


METHOD = Ties
