"""Torch state-dict files, read with ``torch.load(weights_only=True, mmap=True)`` only: pickled
objects (modules, optimisers) are refused, never executed."""

from __future__ import annotations

import mmap
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from lines.errors import LinesError
from lines.io.base import Checkpoint, TensorInfo


def _drop_pages(t: torch.Tensor, bounds: tuple[int, int] | None = None) -> None:
    """Unmap the (clean, file-backed) pages under ``t`` from this process (they stay in the page
    cache and fault back in if read again). Without this every page of every memory-mapped input
    that was ever read counts in the process's RSS: N checkpoints' worth by the end of a merge.
    The range is widened by 2 MiB on each side: a fault maps its neighbours too (fault-around,
    whole large page-cache folios; measured: a 64 KiB margin still left ~7 KB per read
    resident, 1 MiB almost nothing), within ``bounds`` (the file's mapped tensor data)."""
    global _LIBC
    n = t.numel() * t.element_size()
    if n == 0:
        return
    try:
        if _LIBC is None:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        page = mmap.PAGESIZE
        lo, hi = t.data_ptr() - _FAULT_AROUND, t.data_ptr() + n + _FAULT_AROUND
        if bounds is not None:
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        start = lo // page * page
        end = -(-hi // page) * page
        _LIBC.madvise(start, end - start, 4)  # MADV_DONTNEED
    except (OSError, AttributeError, TypeError):  # no libc/madvise: pages just stay resident
        pass


_FAULT_AROUND = 1 << 21
_LIBC = None


class TorchCheckpoint(Checkpoint):
    """A plain ``{name: Tensor}`` torch file, loaded with ``weights_only=True`` (memory-mapped when
    the file is in the zip format, so tensors are paged in lazily). Tensors of a mapped file are
    returned as copies and their pages released (``_drop_pages``), so reading keeps RSS flat."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = self.path  # ``path`` becomes the folder when opened through one
        self._mapped = zipfile.is_zipfile(self.path)
        sd = _torch_load_state_dict(self.path)
        self._sd = sd
        self._keys = list(sd)
        # The span of the mapped tensor data (one mapping of the whole file): page releases are
        # widened but never leave it.
        storages = [t.untyped_storage() for t in sd.values()]
        spans = [(st.data_ptr(), st.data_ptr() + st.nbytes()) for st in storages if st.nbytes()]
        self._bounds = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None

    def keys(self) -> list[str]:
        return list(self._keys)

    def info(self, key: str) -> TensorInfo:
        t = self._sd[key]
        return TensorInfo(tuple(t.shape), t.dtype)

    def get(self, key: str) -> torch.Tensor:
        return self._copy(self._sd[key])

    def get_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._copy(self._sd[key].reshape(-1)[start:stop])

    def _copy(self, t: torch.Tensor) -> torch.Tensor:
        if not self._mapped:
            return t
        out = t.clone()
        _drop_pages(t, self._bounds)
        return out

    def files(self) -> list[Path]:
        return [self.file]

    def close(self) -> None:
        self._sd = {}


def _torch_load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a torch file safely and check that it is a plain state dict (unwrapping one
    ``state_dict``/``model`` level, the common training-checkpoint wrapper)."""
    mapped = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # pickle PROTO: a legacy torch file or a raw pickle
    if not mapped and not pickled:
        raise LinesError(
            f"{path}: corrupt or truncated torch file (neither a zip archive nor a pickle)"
        )
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": stderr is for the one error line only.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as e:
        raise LinesError(
            f"{path}: not a plain state dict (weights_only load refused it: {_refusal(str(e))}); "
            "pickled modules are not loaded because unpickling runs code"
        ) from None
    except Exception as e:  # noqa: BLE001 - garbage makes the unpickler raise anything
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = f"{type(e).__name__}: {msg}" if not isinstance(e, RuntimeError) else msg
        raise LinesError(f"{path}: corrupt or truncated torch file ({msg[:160]})") from None
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only,) = obj.keys()
        if only in ("state_dict", "model", "model_state_dict") and isinstance(obj[only], Mapping):
            obj = obj[only]
    if not isinstance(obj, Mapping):
        raise LinesError(f"{path}: not a plain state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LinesError(
            f"{path}: not a plain state dict (entry {bad[0]!r} is {type(obj[bad[0]]).__name__}, "
            "not a tensor)"
        )
    return dict(obj)


def _refusal(msg: str) -> str:
    """The informative part of torch's long weights_only error: the refused global or opcode."""
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return f"unsupported global {m.group(1)}"
    m = re.search(r"Unsupported operand (\d+)", msg)
    if m:
        return f"unsupported pickle opcode {m.group(1)}"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return (lines[0] if lines else "unpickling error")[:160]
