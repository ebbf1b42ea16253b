"""Evaluation at the GPU's speed for sweeps (issue 13): resident images, a pure low-precision
tower compiled once, weights written in place.

A β sweep evaluates the same splits with hundreds of weight settings of one architecture. The
standard evaluator (:func:`lines.clip.evaluate.evaluate`) reads each batch from the memory-mapped
uint8 cache and copies it to the device, and runs an fp32 tower under autocast: on an H100 it
reached 49% of the bare forward pass (benchmarks/results/clip_eval_h100.md). :class:`FastTower`
instead

- keeps every split's uint8 images on the device when they fit (``budget_bytes``; else streams
  them through two pinned buffers) and runs the splits of one evaluation as one stream of whole
  batches (the last one zero-padded), so that every forward has one shape and no batch is
  wasted on a split's tail;
- normalises on the device inside the forward (exactly ``ToTensor`` + ``Normalize``, in fp32);
- holds a copy of the tower with its weights cast once to ``dtype`` (bf16 on CUDA: the residual
  stream is bf16 under autocast already; only the LayerNorm and bias parameters round), so no
  per-op casts run; attention is ``nn.MultiheadAttention``, i.e. SDPA;
- compiles that forward once (``torch.compile``, ``dynamic=False``) and writes each evaluation
  point's weights into the compiled module's parameters with ``copy_`` (no module rebuild, no
  state-dict load, no recompilation: the compiled code reads the parameters' storage);
- counts correct predictions on the device and synchronises once per split.

Predictions agree with the standard evaluator within the low precision's rounding (in fp32 they
are the same; tests/test_clip_fast.py).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lines.clip.evaluate import CachedSplit, Preprocess, _project
from lines.errors import LinesError

# No CUDA-graph modes ("reduce-overhead", "max-autotune"): a graphed call frees the previous
# call's outputs, and an evaluation keeps every batch's features until the end.
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")
# What ``compile: auto`` means on CUDA: on an H100, "default" compiled in 22 s and ran the ViT-B/32
# sweep at 30.7k images/s, max-autotune-no-cudagraphs took 85 s for 29.9k (results/clip_sweep_h100.md).
AUTO_COMPILE = "default"


class _Normalised(nn.Module):
    """uint8 images → the tower's features: ``Preprocess.normalize`` (fp32), then the tower in its
    own dtype. One module, so that a compiled forward fuses the normalisation into the first op."""

    def __init__(self, tower: nn.Module, pre: Preprocess, dtype: torch.dtype):
        super().__init__()
        self.tower = tower
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div(255).sub(self.mean).div(self.std)
        return self.tower(x.to(self.dtype))


def fast_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The weights' dtype for ``precision`` (the evaluator's option): ``auto`` is bf16 on a CUDA
    device that supports it (fp16 otherwise) and fp32 on the CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision in ("auto", "bf16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    raise LinesError(f"precision must be auto, fp32, bf16 or fp16, got '{precision}'")


def fast_eval_enabled(option: str | bool | None, device: torch.device) -> bool:
    """``fast_eval``: ``auto`` (on CUDA devices), ``true`` or ``false``."""
    v = str(option).lower()
    if v in ("auto", "none", ""):
        return device.type == "cuda"
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise LinesError(f"fast_eval must be auto, true or false, got '{option}'")


def compile_mode_for(option: str | None, device: torch.device) -> str:
    """``compile``: ``auto`` (AUTO_COMPILE on CUDA, ``off`` on the CPU, where compiling a
    tower costs more than a sweep saves), ``off`` or a ``torch.compile`` mode."""
    v = str(option or "auto")
    if v == "auto":
        return AUTO_COMPILE if device.type == "cuda" else "off"
    if v not in COMPILE_MODES:
        raise LinesError(f"compile must be auto or one of {', '.join(COMPILE_MODES)}; got '{v}'")
    return v


class FastTower:
    """A low-precision, optionally compiled copy of an image tower that evaluates cached splits
    held on its device (see the module docstring). ``compile_mode``: ``off`` or a
    ``torch.compile`` mode; ``budget_bytes``: how much device memory the resident images may
    take (None: half of what is free when the first split arrives)."""

    def __init__(
        self,
        encoder: nn.Module,
        preprocess: Preprocess,
        device: torch.device,
        *,
        dtype: torch.dtype = torch.bfloat16,
        batch_size: int = 256,
        compile_mode: str = "off",
        budget_bytes: int | None = None,
    ):
        if compile_mode not in COMPILE_MODES:
            raise LinesError(
                f"compile must be one of {', '.join(COMPILE_MODES)}; got '{compile_mode}'"
            )
        if batch_size < 1:
            raise LinesError(f"batch_size must be positive, got {batch_size}")
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        tower = copy.deepcopy(encoder).to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.module = _Normalised(tower, preprocess, dtype).to(device)
        # name → tensor to write into: the checkpoint's names (without ``visual.``)
        self.weights: dict[str, torch.Tensor] = dict(tower.state_dict(keep_vars=True))
        self.compile_mode = compile_mode
        self.forward = (
            self.module
            if compile_mode == "off"
            else self._compiled(torch.compile(self.module, mode=compile_mode, dynamic=False))
        )
        self.budget_bytes = budget_bytes
        self.resident_bytes = 0
        self._splits: dict[Any, tuple[torch.Tensor | None, torch.Tensor]] = {}
        self._pinned: list[torch.Tensor] = []
        self._events: list[torch.cuda.Event | None] = [None, None]

    def _compiled(self, compiled: Any) -> Any:
        """The compiled forward; if compiling fails (no C compiler or Triton for this device,
        an unsupported op), a warning and the eager module instead: slower, same results."""

        def first(x: torch.Tensor) -> torch.Tensor:
            try:
                y = compiled(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back
                warnings.warn(
                    f"torch.compile ({self.compile_mode}) failed, evaluating eagerly: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    stacklevel=2,
                )
                self.compile_mode = "off (compile failed)"
                self.forward = self.module
                return self.module(x)
            self.forward = compiled
            return y

        return first

    # -- weights -------------------------------------------------------------------------
    @torch.no_grad()
    def load(self, sd: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """Write a state dict (keys ``prefix`` + the tower's names) into the parameters in place
        (cast to the tower's dtype); every parameter must be given."""
        missing = [k for k in self.weights if prefix + k not in sd]
        if missing:
            raise LinesError(f"state dict lacks {len(missing)} tower tensor(s), e.g. {missing[:3]}")
        for k, w in self.weights.items():
            w.copy_(sd[prefix + k])

    @torch.no_grad()
    def sync_from(self, encoder: nn.Module) -> None:
        """Copy an fp32 tower's current weights (same architecture) into this one."""
        self.load(encoder.state_dict())

    # -- images --------------------------------------------------------------------------
    def _budget(self) -> int:
        if self.budget_bytes is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                self.budget_bytes = free // 2
            else:
                self.budget_bytes = 1 << 62  # CPU: the cache is read into memory once anyway
        return self.budget_bytes

    def _split(self, key: Any, cached: CachedSplit) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(images on the device or None when streamed, labels on the device)."""
        if key not in self._splits:
            nbytes = int(np.prod(cached.images.shape))
            labels = torch.from_numpy(np.asarray(cached.labels, dtype=np.int64)).to(self.device)
            imgs = None
            if self.resident_bytes + nbytes <= self._budget():
                # the whole split at once: one read of the memory map, one copy to the device
                imgs = torch.from_numpy(np.array(cached.images)).to(self.device)
                self.resident_bytes += nbytes
            self._splits[key] = (imgs, labels)
        return self._splits[key]

    def _concatenated(self, parts: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, int]]:
        """Whole batches over the resident splits laid end to end (a batch may span two splits:
        features do not depend on the head), the last one padded with zeros; (batch, valid)."""
        b = self.batch_size
        pending: list[torch.Tensor] = []
        have = 0
        for t in parts:
            i = 0
            while i < len(t):
                take = min(b - have, len(t) - i)
                pending.append(t[i : i + take])
                have, i = have + take, i + take
                if have == b:
                    yield (pending[0] if len(pending) == 1 else torch.cat(pending)), b
                    pending, have = [], 0
        if have:
            pad = torch.zeros(
                (b - have, *parts[0].shape[1:]), dtype=torch.uint8, device=self.device
            )
            yield torch.cat([*pending, pad]), have

    def _streamed(self, cached: CachedSplit) -> Iterator[tuple[torch.Tensor, int]]:
        """Batches of a split that is not resident: the next batch is read from the memory map
        into one of two pinned buffers while the device works on the previous one."""
        b, n = self.batch_size, len(cached)
        shape = (b, *cached.images.shape[1:])
        pin = self.device.type == "cuda"
        if not self._pinned or self._pinned[0].shape != shape:
            self._pinned = [torch.zeros(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        for j, i in enumerate(range(0, n, b)):
            buf, ev = self._pinned[j % 2], self._events[j % 2]
            if ev is not None:
                ev.synchronize()  # that buffer's last copy to the device has finished
            m = min(b, n - i)
            with warnings.catch_warnings():  # read-only memory map: copied out at once
                warnings.simplefilter("ignore", UserWarning)
                buf[:m].copy_(torch.from_numpy(cached.images[i : i + m]))
            if m < b:
                buf[m:].zero_()
            x = buf.to(self.device, non_blocking=True)
            if pin:  # on the stream of the tower's device (cuda:N), where the copy was queued
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(self.device))
                self._events[j % 2] = ev
            yield x, m

    def _features(self, batches: Iterator[tuple[torch.Tensor, int]]) -> torch.Tensor:
        return torch.cat([self.forward(x)[:valid] for x, valid in batches])

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def correct_many(
        self, items: Sequence[tuple[Any, CachedSplit, Any, Sequence[Sequence[int]] | None]]
    ) -> list[torch.Tensor]:
        """Per-example correctness (bool, on the CPU) of the current weights on each cached split
        of ``items`` = (key naming it in the resident store, split, ``ZeroShotHead``, the split's
        head columns or None). The resident splits run as one stream of whole batches; the
        results come back with one synchronisation."""
        splits = [self._split(key, cached) for key, cached, _, _ in items]
        feats: list[torch.Tensor | None] = [None] * len(items)
        resident = [i for i, (imgs, _) in enumerate(splits) if imgs is not None]
        if resident:
            parts = [splits[i][0] for i in resident]
            f = self._features(self._concatenated(parts))  # type: ignore[arg-type]
            for i, chunk in zip(resident, f.split([len(p) for p in parts]), strict=True):
                feats[i] = chunk
        for i, (imgs, _) in enumerate(splits):
            if imgs is None:
                feats[i] = self._features(self._streamed(items[i][1]))
        correct = [
            _project(head.logits(f), columns).argmax(dim=1) == labels
            for f, (_, labels), (_, _, head, columns) in zip(feats, splits, items, strict=True)
        ]
        flat = torch.cat(correct).cpu()  # the one synchronisation
        return list(flat.split([len(c) for c in correct]))

    def correct(
        self,
        key: Any,
        cached: CachedSplit,
        head: Any,
        columns: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """:meth:`correct_many` of one split."""
        return self.correct_many([(key, cached, head, columns)])[0]

    def release(self) -> None:
        """Free the resident images (the device memory they hold)."""
        self._splits.clear()
        self.resident_bytes = 0
        self._pinned = []

    def bare_forward(self, x: torch.Tensor, iters: int = 10) -> float:
        """Images per second of the forward alone on a batch already on the device (the
        benchmarks' reference for the end-to-end figure)."""
        import time

        with torch.no_grad():
            for _ in range(2):
                self.forward(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            for _ in range(iters):
                self.forward(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return iters * len(x) / (time.perf_counter() - t0)
