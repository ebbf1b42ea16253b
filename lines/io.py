"""Checkpoint I/O: lazy readers for safetensors, torch state dicts and Hugging Face folders, and an
atomic, streaming safetensors writer.

Readers never materialise a whole model: ``Checkpoint.get(key)`` reads one tensor. The safetensors
reader parses the header itself and reads each tensor with one ``readinto`` from the file (no mmap),
so the page cache is shared between processes but never counted as this process's memory.
Torch files are read with ``torch.load(weights_only=True, mmap=True)`` only: arbitrary pickled
objects (modules, optimisers) are refused, never executed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pickle
import queue
import re
import struct
import threading
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from lines.errors import LinesError
from lines.tempfiles import clean_stale, make_tmp_file, umask_mode

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}

# File names under which Hugging Face and open_clip folders keep their weights, in order of preference.
FOLDER_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_pytorch_model.bin",
)
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Streaming sha256 of one file."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(chunk))  # one buffer, reused: no allocation per block
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


class Checkpoint(ABC):
    """A lazily opened state dict: keys and infos up front, tensors one at a time."""

    path: Path

    @abstractmethod
    def keys(self) -> list[str]: ...

    @abstractmethod
    def info(self, key: str) -> TensorInfo: ...

    @abstractmethod
    def get(self, key: str) -> torch.Tensor:
        """The tensor for ``key`` on the CPU. Callers must not modify it in place."""

    def get_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Entries ``start:stop`` of the flattened (row-major) tensor ``key``, as a 1-D tensor.
        Lets the engine stream a large tensor in slices; readers override it to read only them."""
        return self.get(key).reshape(-1)[start:stop]

    def read_flat_into(self, key: str, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Entries ``start:stop`` of ``key`` read into the front of ``out`` (a 1-D uint8 CPU tensor
        of at least that many bytes, e.g. a pinned staging buffer); returns that part of ``out``
        viewed as the stored dtype. Readers override it to read the file straight into ``out``."""
        src = self.get_flat(key, start, stop).contiguous()
        view = out[: src.numel() * src.element_size()].view(src.dtype)
        view.copy_(src)
        return view

    @abstractmethod
    def files(self) -> list[Path]:
        """The weight files behind this checkpoint, for hashing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __contains__(self, key: str) -> bool:
        return key in self._key_set()

    def _key_set(self) -> set[str]:
        if not hasattr(self, "_keys_cache"):
            self._keys_cache = set(self.keys())
        return self._keys_cache

    def sha256(self) -> str:
        """sha256 of the single weight file, or of ``name:sha`` lines for a multi-file folder."""
        if not hasattr(self, "_sha"):
            files = self.files()
            if len(files) == 1:
                self._sha = sha256_file(files[0])
            else:
                lines = "".join(f"{p.name}:{sha256_file(p)}\n" for p in sorted(files))
                self._sha = hashlib.sha256(lines.encode()).hexdigest()
        return self._sha

    def numel(self) -> int:
        return sum(self.info(k).numel for k in self.keys())

    def nbytes(self) -> int:
        return sum(self.info(k).nbytes for k in self.keys())

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
            if n > _MAX_HEADER or 8 + n > size:
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
        """Fill ``buf`` from ``offset`` with positional reads: no shared file position, so
        several threads may read one checkpoint at once."""
        mv = memoryview(buf).cast("B")
        fd = self._f.fileno()
        done = 0
        while done < len(mv):
            got = os.preadv(fd, [mv[done:]], offset + done)
            if got <= 0:
                raise LinesError(f"{self.path}: truncated file while reading '{key}'")
            done += got

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


class ShardedCheckpoint(Checkpoint):
    """Several weight files presented as one state dict (HF ``*.index.json`` shards)."""

    def __init__(self, path: Path, parts: list[Checkpoint]):
        self.path = Path(path)
        self._parts = parts
        self._owner: dict[str, Checkpoint] = {}
        self._keys: list[str] = []
        for part in parts:
            for k in part.keys():
                if k in self._owner:
                    raise LinesError(f"{self.path}: key '{k}' appears in two shards")
                self._owner[k] = part
                self._keys.append(k)

    def keys(self) -> list[str]:
        return list(self._keys)

    def info(self, key: str) -> TensorInfo:
        return self._owner[key].info(key)

    def get(self, key: str) -> torch.Tensor:
        return self._owner[key].get(key)

    def get_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._owner[key].get_flat(key, start, stop)

    def read_flat_into(self, key: str, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        return self._owner[key].read_flat_into(key, start, stop, out)

    def files(self) -> list[Path]:
        return [f for p in self._parts for f in p.files()]

    def close(self) -> None:
        for p in self._parts:
            p.close()


def _open_file(path: Path) -> Checkpoint:
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint(path)
    if head[:2] == b"PK" or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return TorchCheckpoint(path)
    # Unknown suffix: sniff. A safetensors file starts with a small little-endian header length.
    if len(head) == 8 and struct.unpack("<Q", head)[0] < _MAX_HEADER:
        return SafetensorsCheckpoint(path)
    return TorchCheckpoint(path)


def weight_file_of_folder(folder: Path) -> Path:
    """The weight file (or index) a Hugging Face / open_clip folder keeps its weights in."""
    for name in FOLDER_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise LinesError(
        f"{folder}: no weights found in folder (looked for {', '.join(FOLDER_WEIGHT_FILES)})"
    )


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint lazily: a safetensors file, a torch state-dict file, or a Hugging Face
    (or open_clip) model folder, sharded or not."""
    p = Path(path)
    if not p.exists():
        raise LinesError(f"{p}: no such file or folder")
    if p.is_dir():
        wf = weight_file_of_folder(p)
        if wf.name.endswith(".index.json"):
            try:
                index = json.loads(wf.read_text())
                shard_names = sorted(set(index["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise LinesError(f"{wf}: corrupt shard index") from None
            parts = [_open_file(p / s) for s in shard_names]
            ck: Checkpoint = ShardedCheckpoint(p, parts)
        else:
            ck = _open_file(wf)
        ck.path = p
        return ck
    return _open_file(p)


# ----------------------------------------------------------------------------------------------
# Writing


class _Sink:
    """Appends byte buffers to a file and hashes them in one background thread, so writing and
    sha256 overlap the caller's computing (file writes and hashlib release the GIL). At most
    ``depth`` buffers wait; the caller must not modify a buffer it handed over (the writer only
    hands over tensors it owns or was given to write). Errors surface at the next call."""

    def __init__(self, f: BinaryIO, sha: hashlib._Hash | None, depth: int = 4):
        self._f, self.sha = f, sha
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._err: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="lines-write", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                if self._err is None:
                    mv = memoryview(item[0])  # type: ignore[index]
                    self._f.write(mv)
                    if self.sha is not None:
                        self.sha.update(mv)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._err = e
            finally:
                self._q.task_done()

    def _raise(self) -> None:
        if self._err is not None:
            err, self._err = self._err, None
            raise err

    def put(self, buf: object, keep: object) -> None:
        self._raise()
        self._q.put((buf, keep))

    def flush(self) -> None:
        """Wait until every buffer handed over is written."""
        if self._t.is_alive():
            ev = threading.Event()
            self._q.put(ev)
            ev.wait()
        self._raise()

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, in a declared order, to a temporary file beside
    the target; ``commit()`` renames it into place, so readers never see a half-written file.

    The header is written first (all shapes and dtypes are known up front), so memory stays at one
    tensor whatever the model size. Appends go through a background thread that also computes the
    file's sha256 on the way (``sha256()``), valid as long as nothing was rewritten in place.
    """

    def __init__(
        self,
        target: Path,
        specs: Iterable[tuple[str, TensorInfo]],
        metadata: Mapping[str, str] | None = None,
        reserve: int = 4096,
    ):
        self.target = Path(target)
        self._specs = list(specs)
        self._metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        off = 0
        self._entries: dict[str, object] = {}
        self._expect: dict[str, tuple[TensorInfo, int, int]] = {}
        for key, info in self._specs:
            if info.dtype not in ST_NAMES:
                raise LinesError(f"cannot store dtype {info.dtype} of '{key}' in safetensors")
            self._entries[key] = {
                "dtype": ST_NAMES[info.dtype],
                "shape": list(info.shape),
                "data_offsets": [off, off + info.nbytes],
            }
            self._expect[key] = (info, off, off + info.nbytes)
            off += info.nbytes
        raw = self._header_bytes()
        # Spare header room (spaces are valid JSON padding) so metadata known only at the end,
        # such as norms, can be filled in without moving the data.
        self._header_len = len(raw) + reserve + (8 - (len(raw) + reserve) % 8) % 8
        clean_stale(self.target)
        self.tmp = make_tmp_file(self.target)
        self._f = open(self.tmp, "wb")
        head = struct.pack("<Q", self._header_len) + raw.ljust(self._header_len, b" ")
        self._f.write(head)
        self._sink = _Sink(self._f, hashlib.sha256(head))
        self._data_start = 8 + self._header_len
        self._order = [k for k, _ in self._specs]
        self._next = 0
        self._done = False
        self._digest: str | None = None

    def _header_bytes(self) -> bytes:
        header: dict[str, object] = {}
        if self._metadata:
            header["__metadata__"] = self._metadata
        header.update(self._entries)
        return json.dumps(header, separators=(",", ":")).encode()

    def set_metadata(self, key: str, value: str) -> None:
        """Set a metadata entry before ``commit`` (rewrites the header in its reserved room)."""
        self._metadata[str(key)] = str(value)
        raw = self._header_bytes()
        if len(raw) > self._header_len:
            raise RuntimeError("SafetensorsWriter: metadata exceeds the reserved header room")
        self._sink.flush()
        self._sink.sha = None  # the header changed: the running hash no longer describes the file
        pos = self._f.tell()
        self._f.seek(8)
        self._f.write(raw.ljust(self._header_len, b" "))
        self._f.seek(pos)

    def rewrite(self, key: str, tensor: torch.Tensor) -> None:
        """Overwrite an already written tensor in place (before ``commit``)."""
        self._check_shape(key, tensor)
        self.rewrite_parts(key, [tensor])

    def rewrite_parts(self, key: str, parts: Iterable[torch.Tensor]) -> None:
        """``rewrite`` from consecutive slices of the flattened tensor (see ``write_parts``)."""
        _, begin, _ = self._expect[key]
        if self._order.index(key) >= self._next:
            raise RuntimeError(f"SafetensorsWriter: '{key}' not written yet")
        self._sink.flush()
        self._sink.sha = None
        pos = self._f.tell()
        self._f.seek(self._data_start + begin)
        self._write_bytes(key, parts, direct=True)
        self._f.seek(pos)

    def _check_shape(self, key: str, tensor: torch.Tensor) -> None:
        info, _, _ = self._expect[key]
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise RuntimeError(f"SafetensorsWriter: '{key}' has {tensor.shape}/{tensor.dtype}")

    def _write_bytes(self, key: str, parts: Iterable[torch.Tensor], direct: bool = False) -> None:
        info, _, _ = self._expect[key]
        written = 0
        for part in parts:
            if part.dtype != info.dtype:
                raise RuntimeError(f"SafetensorsWriter: '{key}' got a {part.dtype} slice")
            t = part.detach().to("cpu").contiguous()
            written += t.numel()
            if written > info.numel:
                raise RuntimeError(f"SafetensorsWriter: '{key}' got more than {info.numel} entries")
            if t.numel():
                # One view as bytes, no extra copy (bf16 has no numpy dtype, so go through uint8).
                data = t.reshape(-1).view(torch.uint8).numpy().data
                if direct:
                    self._f.write(data)
                else:
                    self._sink.put(data, t)  # t keeps the buffer alive until it is written
        if written != info.numel:
            raise RuntimeError(f"SafetensorsWriter: '{key}' got {written}/{info.numel} entries")

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; keys must come in the declared order."""
        if self._next >= len(self._order) or self._order[self._next] != key:
            want = self._order[self._next] if self._next < len(self._order) else "<end>"
            raise RuntimeError(f"SafetensorsWriter: got '{key}', expected '{want}'")
        self._check_shape(key, tensor)
        self._write_bytes(key, [tensor])
        self._next += 1

    def write_parts(self, key: str, parts: Iterable[torch.Tensor]) -> None:
        """Append the next tensor as consecutive slices of its flattened (row-major) data, so a
        large tensor never has to exist whole; the slices' sizes must add up to the tensor's."""
        if self._next >= len(self._order) or self._order[self._next] != key:
            want = self._order[self._next] if self._next < len(self._order) else "<end>"
            raise RuntimeError(f"SafetensorsWriter: got '{key}', expected '{want}'")
        self._write_bytes(key, parts)
        self._next += 1

    def commit(self, durable: bool = True) -> Path:
        """Rename the finished file into place; ``durable`` first forces it to disk (skip that
        only for scratch files that are read back at once and deleted)."""
        if self._next != len(self._order):
            raise RuntimeError(
                f"SafetensorsWriter: only {self._next}/{len(self._order)} tensors written"
            )
        self._sink.flush()
        self._sink.close()
        if self._sink.sha is not None:
            self._digest = self._sink.sha.hexdigest()
        self._f.flush()
        if durable:
            os.fsync(self._f.fileno())
        self._f.close()
        os.chmod(self.tmp, umask_mode())
        os.replace(self.tmp, self.target)
        self._done = True
        return self.target

    def sha256(self) -> str | None:
        """sha256 of the committed file, computed while writing; None if anything was rewritten
        in place (then hash the file)."""
        return self._digest

    def abort(self) -> None:
        if not self._done:
            try:
                self._sink.close()
            finally:
                self._f.close()
                self.tmp.unlink(missing_ok=True)
                self._done = True

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()


def write_json_atomic(path: Path, obj: object) -> None:
    clean_stale(path)
    tmp = make_tmp_file(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_state_dict(
    path: Path, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a small in-memory state dict atomically (tests, heads, tiny models)."""
    specs = [(k, TensorInfo(tuple(v.shape), v.dtype)) for k, v in sd.items()]
    with SafetensorsWriter(Path(path), specs, metadata) as w:
        for k, v in sd.items():
            w.write(k, v)
        return w.commit()


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a whole (small) checkpoint into memory."""
    with open_checkpoint(path) as ck:
        return {k: ck.get(k).clone() for k in ck.keys()}


def iter_tensors(
    ck: Checkpoint, keys: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    for k in keys if keys is not None else ck.keys():
        yield k, ck.get(k)
