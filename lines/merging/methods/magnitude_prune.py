from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.errors import LinesError
from lines.merging.base import MergeMethod, check_fraction
from lines.merging.sparsify import MagnitudeTrimmer, TrimScope


@dataclasses.dataclass
class MagnitudePrune(MergeMethod):
    """Magnitude pruning then task arithmetic: keep the top ``density`` fraction of each task vector
    by |τ| (the TIES trim without sign election; Yadav et al. 2023, Sec. 3 ablation), then sum."""

    name: ClassVar[str] = "magnitude_prune"
    # shares the TIES density key, as the pipeline always did
    param_keys: ClassVar[dict[str, str]] = {"density": "ties_density"}
    summary: ClassVar[str] = "top-k magnitude trim of each task vector, then sum"
    reference: ClassVar[str] = "Yadav et al., NeurIPS 2023, arXiv 2306.01708 (trim step)"

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
            raise LinesError(
                f"magnitude_prune scope must be 'global' or 'per_tensor', got '{self.scope}'"
            )

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

    def observe(self, pass_idx: int, key: str, taus: Sequence[torch.Tensor]) -> None:
        self._trim.observe(pass_idx, taus)

    def end_pass(self, pass_idx: int) -> None:
        self._trim.end_pass(pass_idx)

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(self._trim.apply(taus)).sum(0)


METHOD = MagnitudePrune
