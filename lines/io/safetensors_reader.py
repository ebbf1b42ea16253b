"""The safetensors reader: the header parsed and validated as strictly as the safetensors
library, each tensor read with positional reads (no mmap: the page cache is shared but never
counted as this process's memory)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from lines.errors import LinesError
from lines.io.base import MAX_HEADER, ST_DTYPES, Checkpoint, TensorInfo


class SafetensorsCheckpoint(Checkpoint):
    """A safetensors file read tensor by tensor with ``readinto``; header validated on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = self.path  # ``path`` becomes the folder when opened through one
        try:
            size = self.path.stat().st_size
            self._f = open(self.path, "rb")
        except OSError as e:
            raise LinesError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            head = self._f.read(8)
            if len(head) < 8:
                raise LinesError(
                    f"{self.path}: truncated or not a safetensors file (shorter than 8 bytes)"
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise LinesError(
                    f"{self.path}: corrupt or truncated safetensors header (length {n})"
                )
            header = _parse_header(self.path, self._f.read(n))
            self._data_start = 8 + n
            data_len = size - self._data_start
            self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
            self._infos: dict[str, TensorInfo] = {}
            self._offsets: dict[str, tuple[int, int]] = {}
            for key, spec in header.items():
                self._infos[key], self._offsets[key] = _parse_entry(self.path, key, spec)
            _check_layout(self.path, self._offsets, self._data_start, data_len)
        except BaseException:
            self._f.close()
            raise
        # Stored order (by offset) is the natural streaming order: sequential reads.
        self._keys = sorted(self._infos, key=lambda k: self._offsets[k][0])

    def keys(self) -> list[str]:
        return list(self._keys)

    def info(self, key: str) -> TensorInfo:
        return self._infos[key]

    def get(self, key: str) -> torch.Tensor:
        info = self._infos[key]
        begin, end = self._offsets[key]
        if end == begin:
            return torch.empty(info.shape, dtype=info.dtype)
        buf = bytearray(end - begin)
        self._pread(buf, self._data_start + begin, key)
        return torch.frombuffer(buf, dtype=info.dtype).reshape(info.shape)

    def get_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        info = self._infos[key]
        begin, _ = self._offsets[key]
        start, stop = max(0, start), min(stop, info.numel)
        if stop <= start:
            return torch.empty(0, dtype=info.dtype)
        esize = info.nbytes // info.numel
        buf = bytearray((stop - start) * esize)
        self._pread(buf, self._data_start + begin + start * esize, key)
        return torch.frombuffer(buf, dtype=info.dtype)

    def read_flat_into(self, key: str, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        info = self._infos[key]
        begin, _ = self._offsets[key]
        esize = info.nbytes // max(info.numel, 1)
        nbytes = (stop - start) * esize
        if nbytes == 0:
            return torch.empty(0, dtype=info.dtype)
        view = out[:nbytes]
        self._pread(memoryview(view.numpy()), self._data_start + begin + start * esize, key)
        return view.view(info.dtype)

    def _pread(self, buf: bytearray | memoryview, offset: int, key: str) -> None:
        pread_full(self._f.fileno(), buf, offset, self.path, f"'{key}'")

    def byte_range(self, key: str) -> tuple[int, Path, int, int]:
        begin, end = self._offsets[key]
        return self._f.fileno(), self.file, self._data_start + begin, end - begin

    def files(self) -> list[Path]:
        return [self.file]

    def close(self) -> None:
        self._f.close()


def _parse_header(path: Path, raw: bytes) -> dict[str, object]:
    """The header JSON, checked as strictly as the safetensors library: an object, no duplicate
    keys, ``__metadata__`` a map of strings."""

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        d: dict[str, object] = {}
        for k, v in pairs:
            if k in d:
                raise LinesError(f"{path}: corrupt safetensors header (key '{k}' appears twice)")
            d[k] = v
        return d

    try:
        header = json.loads(raw, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LinesError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise LinesError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise LinesError(
            f"{path}: corrupt safetensors header (__metadata__ is not a map of strings)"
        )
    return header


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_entry(path: Path, key: str, spec: object) -> tuple[TensorInfo, tuple[int, int]]:
    """One tensor's dtype, shape and data offsets, each validated."""
    if not isinstance(spec, dict):
        raise LinesError(f"{path}: corrupt safetensors entry for '{key}' (not an object)")
    dtype_name, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if (
        not isinstance(dtype_name, str)
        or not isinstance(shape, list)
        or not isinstance(offsets, list)
    ):
        raise LinesError(f"{path}: corrupt safetensors entry for '{key}'")
    if dtype_name not in ST_DTYPES:
        raise LinesError(
            f"{path}: corrupt safetensors entry for '{key}' (unknown dtype '{dtype_name}')"
        )
    if not all(_is_int(s) for s in shape) or any(s < 0 for s in shape):
        raise LinesError(f"{path}: corrupt safetensors entry for '{key}' (shape {shape})")
    if len(offsets) != 2 or not all(_is_int(x) for x in offsets):
        raise LinesError(f"{path}: corrupt safetensors entry for '{key}' (data_offsets {offsets})")
    begin, end = offsets
    info = TensorInfo(tuple(shape), ST_DTYPES[dtype_name])
    if begin < 0 or end < begin:
        raise LinesError(f"{path}: corrupt safetensors entry for '{key}' (data_offsets {offsets})")
    if end - begin != info.nbytes:
        raise LinesError(f"{path}: corrupt safetensors entry for '{key}' (size mismatch)")
    return info, (begin, end)


def _check_layout(
    path: Path, offsets: Mapping[str, tuple[int, int]], data_start: int, data_len: int
) -> None:
    """Tensors must tile the data section exactly: in bounds, contiguous from 0, no overlap, no
    gap and nothing after the last one (what the safetensors library requires). A tensor whose
    bytes were another's would otherwise be read silently."""
    prev_end, prev_key = 0, None
    for key, (begin, end) in sorted(offsets.items(), key=lambda kv: kv[1]):
        if end > data_len:
            raise LinesError(
                f"{path}: truncated file: '{key}' ends at byte {data_start + end}, "
                f"file has {data_start + data_len}"
            )
        if begin < prev_end:
            raise LinesError(f"{path}: corrupt safetensors header ('{key}' overlaps '{prev_key}')")
        if begin > prev_end:
            raise LinesError(
                f"{path}: corrupt safetensors header (gap of {begin - prev_end} bytes before '{key}')"
            )
        prev_end, prev_key = end, key
    if prev_end != data_len:
        raise LinesError(
            f"{path}: corrupt safetensors file ({data_len - prev_end} bytes after the last tensor)"
        )


def pread_full(fd: int, buf: bytearray | memoryview, offset: int, path: Path, what: str) -> None:
    """Fill ``buf`` from ``offset`` of ``fd`` with positional reads (no shared file position, so
    several threads may read one file at once). LinesError naming ``path`` and ``what`` on an
    early end of file or an OS error."""
    mv = memoryview(buf).cast("B")
    done = 0
    while done < len(mv):
        try:
            got = os.preadv(fd, [mv[done:]], offset + done)
        except OSError as e:
            raise LinesError(f"{path}: cannot read {what} ({e.strerror})") from None
        if got <= 0:
            raise LinesError(f"{path}: truncated file while reading {what}")
        done += got
