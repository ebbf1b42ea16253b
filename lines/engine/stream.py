"""Reading task vectors tensor by tensor (the engine's input side; Wang et al., ICLR 2025, Sec. 3).

Merging N checkpoints never holds N models. For each tensor the engine reads θ_0 and the N
fine-tuned tensors and forms τ_i = θ_i − θ_0 (floating tensors only; integer buffers pass through
from θ_0). Element-wise methods (``is_elementwise``) are fed large tensors in flat slices of at
most ``WORKING_SET_BYTES / (N + 1)`` bytes per input, so peak memory is a few times
``WORKING_SET_BYTES`` whatever N or the largest tensor; the other methods (DARE, per-tensor trims)
hold one whole tensor per input. Methods that need whole-vector statistics get extra streaming
passes first (``run_statistics``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lines.errors import LinesError
from lines.families import Partition
from lines.io import (
    Checkpoint,
)
from lines.merging import MergeMethod
from lines.merging.base import TaskVectors
from lines.readahead import ReadAhead, Resident, Unit, check_finite, fits_resident

PathLike = str | os.PathLike[str]

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# float32 bytes of one slice of every input together (θ_0 and the N fine-tuned checkpoints).
# The methods' temporaries (stacks, masks, trimmed copies) are a small multiple of it.
WORKING_SET_BYTES = 4 << 20
MIN_SLICE = 1 << 16
# On a GPU the slices live in device memory and host memory holds only the readers' pinned
# staging buffers, so slices are large: fewer, larger reads, copies and kernels (a slice of a few
# hundred kilobytes makes a merge launch- and latency-bound).
GPU_WORKING_SET_BYTES = 256 << 20


def working_set(device: torch.device) -> int:
    return GPU_WORKING_SET_BYTES if device.type == "cuda" else WORKING_SET_BYTES


def is_elementwise(method: MergeMethod) -> bool:
    """Whether ``method`` treats every entry independently given its statistics passes, so a tensor
    may be fed to it in slices: the method's own declaration (``MergeMethod.elementwise``)."""
    return bool(method.elementwise)


def spans(numel: int, size: int | None) -> list[tuple[int, int] | None]:
    """Flat [start, stop) slices of a tensor, or [None] (the whole tensor, in its shape)."""
    if size is None or numel <= size:
        return [None]
    return [(s, min(s + size, numel)) for s in range(0, numel, size)]


def read_span(ck: Checkpoint, key: str, span: tuple[int, int] | None) -> torch.Tensor:
    return ck.get(key) if span is None else ck.get_flat(key, *span)


def sum_tensors(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ ts with one accumulator (``torch.stack(ts).sum(0)`` would hold N more copies)."""
    out = ts[0].clone()
    for t in ts[1:]:
        out += t
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LinesError(f"device '{device}' requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise LinesError(f"unknown device '{device}' (choose cpu, cuda or auto)")
    return torch.device(device)


def check_compatible(base: Checkpoint, others: Sequence[Checkpoint]) -> None:
    """Every input must have θ_0's keys, shapes and dtypes; name the first offending key."""
    bkeys = base.keys()
    bset = set(bkeys)
    for o in others:
        okeys = o.keys()
        oset = set(okeys)
        missing = [k for k in bkeys if k not in oset]
        if missing:
            raise LinesError(
                f"{o.path}: missing {len(missing)} key(s) of the pretrained checkpoint, first '{missing[0]}'"
            )
        extra = [k for k in okeys if k not in bset]
        if extra:
            raise LinesError(
                f"{o.path}: {len(extra)} extra key(s) not in the pretrained checkpoint, first '{extra[0]}'"
            )
        for k in bkeys:
            bi, oi = base.info(k), o.info(k)
            if bi.shape != oi.shape:
                raise LinesError(
                    f"{o.path}: shape mismatch at '{k}': {list(oi.shape)} vs pretrained {list(bi.shape)}"
                )
            if bi.dtype != oi.dtype:
                raise LinesError(
                    f"{o.path}: dtype mismatch at '{k}': {oi.dtype} vs pretrained {bi.dtype}"
                )


def checked(ck: Checkpoint, key: str, t: torch.Tensor) -> torch.Tensor:
    check_finite(ck, key, t)
    return t


@dataclass
class TaskVectorStream:
    """Reads θ_0 and the fine-tuned checkpoints tensor by tensor and yields task vectors."""

    base: Checkpoint
    finetuned: list[Checkpoint]
    device: torch.device
    partition: Partition
    pre_lambdas: list[float] | None = None  # LiNeS on each τ_i before merging
    task_weights: Sequence[float] | None = None  # a weight per τ_i, applied before merging
    progress: bool = True
    sliced: bool = False  # feed large tensors in flat slices (element-wise methods only)
    float_keys: list[str] = field(init=False)
    slice_numel: int | None = field(init=False)
    # None: every input held on a CUDA device when it fits (read once with large parallel reads:
    # 1.3-1.5x faster merges of ViT-B/32 N = 8 on an H100, benchmarks/NOTES.md), else the
    # read-ahead; True: held on the CPU too; False: always the read-ahead
    resident: bool | None = None
    _reader: ReadAhead | Resident | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.float_keys = [k for k in self.base.keys() if self.base.info(k).dtype.is_floating_point]
        per_input = working_set(self.device) // (4 * (len(self.finetuned) + 1))
        self.slice_numel = max(MIN_SLICE, per_input) if self.sliced else None

    def spans(self, key: str) -> list[tuple[int, int] | None]:
        return spans(self.base.info(key).numel, self.slice_numel)

    def total_entries(self) -> int:
        return sum(self.base.info(k).numel for k in self.float_keys)

    def units(self) -> list[Unit]:
        """Every (key, span) of one pass, in the order the passes read them."""
        return [(k, s) for k in self.float_keys for s in self.spans(k)]

    def read(
        self, key: str, span: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(θ_0[key] as float32 on the device, [τ_i[key]]); with ``span`` that flat slice only.

        The inputs come from a read-ahead (the next units are read, checked for NaN/Inf once and
        moved to the device while this one is computed); the τ_i are the rows of one (N, …)
        float32 tensor (``TaskVectors``), each written once by a subtraction."""
        raw = self.reader().get((key, span))
        b = raw[0].float()
        x = torch.empty((len(raw) - 1, *b.shape), dtype=torch.float32, device=b.device)
        for i, t in enumerate(raw[1:]):
            torch.sub(t, b, out=x[i])
        del raw
        self._pre_scale(key, x)
        return b, TaskVectors(x)

    def _pre_scale(self, key: str, x: torch.Tensor) -> None:
        """Per-task LiNeS before merging (λ_pre(ℓ)) and per-task weights w_i, on the (N, …) stack."""
        if self.pre_lambdas is not None:
            x.mul_(self.pre_lambdas[self.partition.block_of(key) - 1])
        if self.task_weights is not None:
            w = torch.tensor(list(self.task_weights), dtype=x.dtype, device=x.device)
            x.mul_(w.view(-1, *([1] * (x.dim() - 1))))

    def reader(self) -> ReadAhead | Resident:
        """Every input read once into device memory (``Resident``) when ``resident`` is True,
        or None on a GPU, and on a GPU only if they fit; otherwise a read-ahead over the passes'
        unit order."""
        if self._reader is None:
            cks = [self.base, *self.finetuned]
            on_cpu = self.device.type != "cuda"  # there the caller's choice is obeyed
            want = self.resident if self.resident is not None else not on_cpu
            if want and (on_cpu or fits_resident(cks, self.float_keys, self.device)):
                self._reader = Resident(cks, self.float_keys, self.device)
            else:
                self._reader = ReadAhead(cks, self.units(), self.device)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def sample(self, per_vector: int, window: int = 1024) -> Iterator[tuple[str, TaskVectors]]:
        """About ``per_vector`` entries of every task vector, in evenly spaced windows of every
        floating tensor, each tensor's share proportional to its size: small reads, a tiny
        fraction of one pass. Yields (key, task vectors of the concatenated windows)."""
        rate = min(1.0, per_vector / max(self.total_entries(), 1))
        for key in self.float_keys:
            n = self.base.info(key).numel
            want = round(n * rate)
            if want == 0:
                continue
            nwin = -(-want // window)
            size = -(-want // nwin)
            starts = [round(j * (n - size) / max(nwin - 1, 1)) for j in range(nwin)]
            cks = [self.base, *self.finetuned]
            raw = [torch.cat([ck.get_flat(key, a, a + size) for a in starts]) for ck in cks]
            b = raw[0].to(self.device).float()
            x = torch.empty((len(cks) - 1, b.numel()), dtype=torch.float32, device=b.device)
            for i, t in enumerate(raw[1:]):
                torch.sub(t.to(self.device), b, out=x[i])
            self._pre_scale(key, x)
            yield key, TaskVectors(x)

    def iterate(self, desc: str) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        for key in tqdm(
            self.float_keys, desc=desc, unit="tensor", disable=not self.progress, leave=False
        ):
            for span in self.spans(key):
                b, taus = self.read(key, span)
                yield key, b, taus


def run_statistics(stream: TaskVectorStream, method: MergeMethod) -> None:
    """The method's statistics passes, after the sample it asks for; a pass the earlier ones
    made unnecessary (``needs_pass``) is skipped."""
    if method.stats_passes and method.stats_sample:
        for key, taus in stream.sample(method.stats_sample):
            method.observe(-1, key, taus)
        method.end_pass(-1)
    for p in range(method.stats_passes):
        if not method.needs_pass(p):
            continue
        for key, _, taus in stream.iterate(f"statistics pass {p + 1}/{method.stats_passes}"):
            method.observe(p, key, taus)
        method.end_pass(p)
