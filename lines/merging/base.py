"""The merge-method interface, and the small pure primitives methods are composed from.

A method maps N task vectors to one merged task vector τ_MTL, one tensor at a time
(``merge_tensor``). Methods that need whole-vector statistics (TIES's global top-k threshold)
declare ``stats_passes``: the engine streams every tensor through ``observe`` that many times
before merging, so no method ever holds more than one tensor per input.
LiNeS and the uniform coefficient are applied by the engine afterwards: θ = θ_0 + λ(ℓ)·τ_MTL.
"""

from __future__ import annotations

import dataclasses
import math
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
    # Entries per task vector the method wants to see, as evenly spread windows of every tensor,
    # before its statistics passes (``observe``/``end_pass`` with pass_idx = -1); 0 = none.
    stats_sample: ClassVar[int] = 0
    # Whether τ_MTL of an entry depends only on that entry's N values, so the engine may merge a
    # tensor in slices. Declared by each method (a property where a parameter decides it, e.g.
    # TIES's per-tensor trim); False, the safe answer, for a method that says nothing.
    elementwise: ClassVar[bool] = False
    # Whether the method iterates (an optimiser per matrix, e.g. WUDI) and so should merge on the
    # accelerator the suite evaluates on even where a suite otherwise merges on the CPU.
    accelerated: ClassVar[bool] = False
    # Pipeline keys of the parameters that are not named ``<method>_<field>`` in the params'
    # ``merge`` section (see ``lines.merging.params``): field → key.
    param_keys: ClassVar[dict[str, str]] = {}

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

    def needs_pass(self, pass_idx: int) -> bool:
        """False when the statistics of the earlier passes already settled pass ``pass_idx``
        (TIES's radix select usually finishes in one pass): the engine skips it."""
        return True

    @abstractmethod
    def merge_tensor(self, key: str, taus: Sequence[torch.Tensor]) -> torch.Tensor:
        """τ_MTL for one tensor from the N task vectors of that tensor (float32)."""

    def merged_is_sum(self) -> bool:
        """True when τ_MTL = Σ τ_i exactly: then ‖τ_sum‖ = ‖τ_MTL‖, the automatic LiNeS α is 1/N
        and the engine needs no separate norm pass."""
        return False

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


class TaskVectors(list):
    """The N task vectors of one tensor (or slice) as row views of one (N, …) tensor, which the
    engine builds anyway: ``stacked(taus)`` then costs nothing. Still a plain list of tensors."""

    def __init__(self, stacked: torch.Tensor):
        super().__init__(stacked.unbind(0))
        self.stacked = stacked


def stacked(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(taus)``, without the copy when the engine passed a ``TaskVectors``.
    The result may share memory with ``taus``: do not modify it in place."""
    s = getattr(taus, "stacked", None)
    return s if s is not None else torch.stack(list(taus))


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


def disjoint_mean_stacked(
    x: torch.Tensor, sign: torch.Tensor, with_count: bool = False, inplace: bool = False
) -> Any:
    """``disjoint_mean`` on an (N, …) stack, bit for bit, in fewer passes: with s = +1 where
    ``sign`` > 0 and −1 elsewhere, the selected entries are those with s·x > 0, so
    Σ selected = s·Σ max(s·x, 0) (negation is exact) and the count is #(s·x > 0).
    ``with_count``: also return that count (before clamping to 1). ``inplace``: overwrite ``x``
    (a stack the caller owns) instead of allocating another N-stack."""
    s = torch.where(sign > 0, 1.0, -1.0).to(x.dtype)
    y = (x.mul_(s) if inplace else x * s).clamp_(min=0)
    count = (y > 0).sum(0)
    out = y.sum(0).mul_(s) / count.clamp(min=1)
    return (out, count) if with_count else out


def float_bits(abs_values: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 view of non-negative float32 values."""
    return abs_values.float().contiguous().view(torch.int32)


class MultiRadixSelect:
    """Exact k-th smallest of each row of a stream of non-negative float32 (R, n) blocks, in two
    streaming passes, never holding more than one block: pass 0 histograms the high 16 bits of
    the (order-preserving) bit patterns, pass 1 histograms the low 16 bits inside the one high
    bucket that holds each row's k-th value. Equals ``torch.kthvalue`` over each row's
    concatenation, ties included.

    All R rows (the N task vectors of TIES) share one ``bincount`` per block and pass, with the
    row index in the bucket's top bits, instead of R calls; pass 1 only touches the few entries
    that fall in a boundary bucket (``index_add_``, no full-size histogram per block).

    One pass instead of two: given a sample of each row first (``observe(-1, …)``, e.g. evenly
    spread windows of every tensor), a bracket of high buckets around the sample's k-th value is
    chosen and pass 0 also keeps every entry whose bucket lies in it. When the exact bucket found
    by pass 0's histogram lies in the bracket, which is the rule, the k-th value is selected among
    those kept entries and pass 1 is skipped (``needs_pass(1)`` is False); otherwise pass 1 runs
    as without a sample. Exact either way: the sample only decides what is kept, never the value.
    """

    SAMPLE = 1 << 19  # sample entries per row that callers should provide

    HI = 1 << 15  # non-negative float32: the sign bit is 0, so bits >> 16 < 2^15
    LO = 1 << 16

    def __init__(self, rows: int, total: int, k: int, device: torch.device | str = "cpu"):
        self.rows, self.total, self.k = rows, total, k
        self.trivial = k <= 0 or total == 0
        self.device = torch.device(device)
        self.hi = torch.zeros(rows * self.HI, dtype=torch.int64, device=self.device)
        self.lo: torch.Tensor | None = None
        self.buckets: torch.Tensor | None = None  # (rows, 1) int32
        self.ranks: list[int] | None = None
        self.values: list[float] | None = [float("-inf")] * rows if self.trivial else None
        self._sample: list[torch.Tensor] = []
        self._band: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, 1) bucket bounds
        # Kept entries: one buffer allocated once, row i in [start_i, start_i + cap_i). Not a list
        # of small tensors: thousands of small long-lived allocations between each block's large
        # temporaries fragment the C heap until RSS grows by a block per block (measured: 3.4 GB).
        self._kept: torch.Tensor | None = None
        self._start: list[int] = []
        self._cap: list[int] = []
        self._len: list[int] = []
        self.one_pass = False  # pass 0 settled every row

    def observe(self, pass_idx: int, abs_values: torch.Tensor) -> None:
        """``abs_values``: (rows, …) non-negative values of one block."""
        if self.trivial or abs_values.numel() == 0 or (pass_idx > 0 and self.one_pass):
            return
        bits = float_bits(abs_values).reshape(self.rows, -1)
        if pass_idx < 0:
            self._sample.append(bits.clone())
        elif pass_idx == 0:
            hi = bits >> 16
            if self._band is not None and self._kept is not None:
                lo_b, hi_b = self._band
                keep = (hi >= lo_b) & (hi <= hi_b)
                counts = keep.sum(1).tolist()  # one synchronisation per block on a GPU
                sel = bits[keep]  # row-major: row 0's entries first
                o = 0
                for i, c in enumerate(counts):
                    at = self._start[i] + self._len[i]
                    if self._len[i] + c > self._cap[i]:  # a poor bracket: pass 1 will run
                        self._kept = None
                        break
                    self._kept[at : at + c].copy_(sel[o : o + c])
                    self._len[i] += c
                    o += c
            if self.rows > 1:
                hi += self._row_offsets(self.HI)
            self.hi += torch.bincount(hi.reshape(-1), minlength=self.rows * self.HI)
        else:
            assert self.buckets is not None and self.lo is not None
            sel = (bits >> 16) == self.buckets
            low = bits & 0xFFFF
            if self.rows > 1:
                low += self._row_offsets(self.LO)
            idx = low[sel].long()
            if idx.numel():
                self.lo.index_add_(0, idx, torch.ones_like(idx))

    def _row_offsets(self, width: int) -> torch.Tensor:
        return (torch.arange(self.rows, device=self.device, dtype=torch.int32) * width).unsqueeze(1)

    def needs_pass(self, pass_idx: int) -> bool:
        return not (pass_idx == 1 and (self.one_pass or self.trivial))

    def _bracket(self) -> None:
        """From the sample: per row, the high buckets between the sample's quantiles
        k/total ∓ δ, δ about four standard errors of a quantile estimate (with room for the
        correlation of entries inside one window) plus a floor."""
        sample = torch.cat(self._sample, dim=1) if self._sample else None
        self._sample = []
        if sample is None or sample.shape[1] < 1024:
            return
        m = sample.shape[1]
        q = min(max(self.k / self.total, 0.0), 1.0)
        delta = 4.0 * math.sqrt(max(q * (1 - q), 1e-6) * 4.0 / m) + 1e-3
        srt = sample.sort(dim=1).values
        i_lo = max(0, min(m - 1, math.floor((q - delta) * m)))
        i_hi = max(0, min(m - 1, math.ceil((q + delta) * m)))
        lo_b = (srt[:, i_lo : i_lo + 1] >> 16).to(torch.int32)
        hi_b = (srt[:, i_hi : i_hi + 1] >> 16).to(torch.int32)
        self._band = (lo_b, hi_b)
        # room for twice the share of the sample inside the bracket, plus a floor
        sh = srt >> 16
        frac = ((sh >= lo_b) & (sh <= hi_b)).float().mean(1).tolist()
        self._cap = [int(2 * f * self.total) + (1 << 16) for f in frac]
        self._start = [sum(self._cap[:i]) for i in range(self.rows)]
        self._len = [0] * self.rows
        self._kept = torch.empty(sum(self._cap), dtype=torch.int32, device=self.device)

    def end_pass(self, pass_idx: int) -> None:
        if self.trivial or (pass_idx > 0 and self.one_pass):
            return
        if pass_idx < 0:
            self._bracket()
            return
        if pass_idx == 0:
            cum = torch.cumsum(self.hi.view(self.rows, self.HI), 1)
            ks = torch.full((self.rows, 1), self.k, dtype=cum.dtype, device=cum.device)
            b = torch.searchsorted(cum, ks)  # first bucket whose cumulative count reaches k
            before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(b))
            self.buckets = b.to(torch.int32)
            self.ranks = (ks - before).view(-1).tolist()
            self.hi = torch.zeros(0, dtype=torch.int64, device=self.device)  # no longer needed
            if self._finish_from_kept():
                return
            self.lo = torch.zeros(self.rows * self.LO, dtype=torch.int64, device=self.device)
        else:
            assert self.buckets is not None and self.ranks is not None and self.lo is not None
            cum = torch.cumsum(self.lo.view(self.rows, self.LO), 1)
            ranks = torch.tensor(self.ranks, dtype=cum.dtype, device=cum.device).unsqueeze(1)
            low = torch.searchsorted(cum, ranks).to(torch.int32)
            bits = ((self.buckets << 16) | low).view(-1).cpu()
            self.values = [float(v) for v in bits.view(torch.float32)]
            self.lo = None

    def _finish_from_kept(self) -> bool:
        """After pass 0: the k-th value of every row from the kept entries, if each row's exact
        bucket lies inside its bracket (then all of that bucket's entries were kept)."""
        kept, self._kept = self._kept, None
        if kept is None or self._band is None or self.buckets is None or self.ranks is None:
            return False
        lo_b, hi_b = self._band
        if not bool(((self.buckets >= lo_b) & (self.buckets <= hi_b)).all()):
            return False
        values = []
        for i in range(self.rows):
            c = kept[self._start[i] : self._start[i] + self._len[i]]
            c = c[(c >> 16) == self.buckets[i, 0]]
            r = self.ranks[i]
            if not 1 <= r <= c.numel():  # cannot happen when the bucket was kept whole
                return False
            bits = c.kthvalue(r).values.view(1).cpu()
            values.append(float(bits.view(torch.float32)[0]))
        self.values = values
        self.one_pass = True
        return True


class RadixSelect:
    """Exact k-th smallest of a stream of non-negative float32 values in two streaming passes
    (one row of ``MultiRadixSelect``; with a sample first, usually one). Equals
    ``torch.kthvalue`` over the concatenation."""

    def __init__(self, total: int, k: int, device: torch.device | str = "cpu"):
        self._m = MultiRadixSelect(1, total, k, device)
        self.total, self.k, self.trivial = total, k, self._m.trivial

    @property
    def value(self) -> float | None:
        return None if self._m.values is None else self._m.values[0]

    def observe(self, pass_idx: int, abs_values: torch.Tensor) -> None:
        self._m.observe(pass_idx, abs_values.reshape(1, -1))

    def end_pass(self, pass_idx: int) -> None:
        self._m.end_pass(pass_idx)

    def needs_pass(self, pass_idx: int) -> bool:
        return self._m.needs_pass(pass_idx)


def global_k(total: int, density: float) -> int:
    """The rank of the reference threshold within a whole task vector of ``total`` entries."""
    return total - int(total * density)
