"""Magnitude trimming shared by TIES and magnitude pruning: keep the top ``density`` fraction of
each task vector by |value|, either over the whole task vector (global, as in the TIES paper and
the reference implementation) or within each tensor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal

import torch

from lines.errors import LinesError
from lines.merging.base import (
    MergeMethod,
    MultiRadixSelect,
    check_fraction,
    global_k,
    kth_threshold,
    stacked,
)

TrimScope = Literal["global", "per_tensor"]


class MagnitudeTrimmer:
    """Holds one threshold per task vector. Global scope needs the engine's two statistics passes
    (exact radix select, all N task vectors in one batched select); per-tensor scope computes the
    threshold on the fly."""

    def __init__(self, density: float, scope: TrimScope):
        self.density, self.scope = density, scope
        self.select: MultiRadixSelect | None = None
        self.total = 0
        self._thr: dict[torch.device, torch.Tensor] = {}

    @property
    def passes(self) -> int:
        return 2 if self.scope == "global" and self.density < 1 else 0

    @property
    def sample_size(self) -> int:
        """Entries per task vector to sample before the passes (lets pass 0 settle the
        thresholds alone, see ``MultiRadixSelect``)."""
        return MultiRadixSelect.SAMPLE if self.passes else 0

    def needs_pass(self, pass_idx: int) -> bool:
        return self.select is None or self.select.needs_pass(pass_idx)

    def begin(self, num_models: int, total_entries: int, device: torch.device | str) -> None:
        self.total = total_entries
        k = global_k(total_entries, self.density)
        self.select = MultiRadixSelect(num_models, total_entries, k, device)
        self._thr = {}

    def observe(self, pass_idx: int, taus: Sequence[torch.Tensor]) -> None:
        assert self.select is not None
        self.select.observe(pass_idx, stacked(taus).abs())

    def end_pass(self, pass_idx: int) -> None:
        assert self.select is not None
        self.select.end_pass(pass_idx)

    def thresholds(self) -> list[float]:
        assert self.select is not None
        return list(self.select.values)  # type: ignore[arg-type]

    def row_thresholds(self, flat: torch.Tensor) -> torch.Tensor:
        """The (N,) float32 thresholds of the rows of an (N, d) stack: the global ones, or each
        row's own k-th value (computed one row at a time, so only one row's |τ| is extra)."""
        n = flat.shape[0]
        if self.density >= 1:
            return torch.full((n,), float("-inf"), dtype=torch.float32, device=flat.device)
        if self.scope == "global":
            thr = self._thr.get(flat.device)
            if thr is None:
                thr = torch.tensor(self.thresholds(), dtype=torch.float32, device=flat.device)
                self._thr[flat.device] = thr
            return thr
        vals = [kth_threshold(flat[i].abs(), self.density) for i in range(n)]
        return torch.tensor(vals, dtype=torch.float32, device=flat.device)


# Entries per row of one chunk of a whole tensor (per-tensor scope): the trimmed copy and the
# elect/merge temporaries then cost N × 16 MB, not N × the largest tensor.
CHUNK = 1 << 22


def trimmed_chunks(
    trimmer: MagnitudeTrimmer, x: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The trimmed (N, chunk) pieces of the (N, …) stack ``x`` along its flattened entries, each
    a new tensor (x · (|x| ≥ thr_i), as ``trim``); per-tensor thresholds are taken over the whole
    tensor first. Element-wise steps after the trim give the same bits chunk by chunk."""
    flat = x.reshape(x.shape[0], -1)
    thr = trimmer.row_thresholds(flat).view(-1, 1)
    for a in range(0, flat.shape[1], CHUNK):
        c = flat[:, a : a + CHUNK]
        yield slice(a, a + c.shape[1]), c * (c.abs() >= thr)


@dataclasses.dataclass
class TrimmedMethod(MergeMethod):
    """A method that first keeps the top ``density`` of each task vector by |τ| (TIES, magnitude
    pruning): the parameters, their validation and the statistics passes of the trim."""

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
                f"{self.name} scope must be 'global' or 'per_tensor', got '{self.scope}'"
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

    def thresholds(self) -> list[float]:
        return self._trim.thresholds()
