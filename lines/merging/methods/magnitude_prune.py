from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch

from lines.merging.base import stacked
from lines.merging.sparsify import TrimmedMethod, trimmed_chunks


@dataclasses.dataclass
class MagnitudePrune(TrimmedMethod):
    """Magnitude pruning then task arithmetic: keep the top ``density`` fraction of each task vector
    by |τ| (the TIES trim without sign election; Yadav et al. 2023, Sec. 3 ablation), then sum."""

    name: ClassVar[str] = "magnitude_prune"
    # shares the TIES density key, as the pipeline always did
    param_keys: ClassVar[dict[str, str]] = {"density": "ties_density"}
    summary: ClassVar[str] = "top-k magnitude trim of each task vector, then sum"
    reference: ClassVar[str] = "Yadav et al., NeurIPS 2023, arXiv 2306.01708 (trim step)"

    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        x = stacked(taus)
        out = torch.empty(x[0].numel(), dtype=x.dtype, device=x.device)
        for where, t in trimmed_chunks(self._trim, x):  # per entry: same bits as whole
            out[where] = t.sum(0)
        return out.view(x.shape[1:])


METHOD = MagnitudePrune
