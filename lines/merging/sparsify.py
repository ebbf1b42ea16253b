"""Magnitude trimming shared by TIES and magnitude pruning: keep the top ``density`` fraction of
each task vector by |value|, either over the whole task vector (global, as in the TIES paper and
the reference implementation) or within each tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from lines.merging.base import RadixSelect, global_k, kth_threshold, trim

TrimScope = Literal["global", "per_tensor"]


class MagnitudeTrimmer:
    """Holds one threshold per task vector. Global scope needs the engine's two statistics passes
    (exact radix select); per-tensor scope computes the threshold on the fly."""

    def __init__(self, density: float, scope: TrimScope):
        self.density, self.scope = density, scope
        self.selects: list[RadixSelect] = []
        self.total = 0

    @property
    def passes(self) -> int:
        return 2 if self.scope == "global" and self.density < 1 else 0

    def begin(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        self.total = total_entries
        k = global_k(total_entries, self.density)
        self.selects = [RadixSelect(total_entries, k, device) for _ in range(num_models)]

    def observe(self, pass_idx: int, taus: Sequence[torch.Tensor]) -> None:
        for sel, t in zip(self.selects, taus, strict=True):
            sel.observe(pass_idx, t.abs())

    def end_pass(self, pass_idx: int) -> None:
        for sel in self.selects:
            sel.end_pass(pass_idx)

    def thresholds(self) -> list[float]:
        return [s.value for s in self.selects]  # type: ignore[misc]

    def apply(self, taus: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.density >= 1:
            return list(taus)
        if self.scope == "global":
            return [trim(t, thr) for t, thr in zip(taus, self.thresholds(), strict=True)]
        return [trim(t, kth_threshold(t.abs(), self.density)) for t in taus]
