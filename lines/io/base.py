"""What every reader shares: the safetensors dtype names, ``TensorInfo``, the ``Checkpoint``
interface (keys and infos up front, tensors one at a time) and streaming sha256."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from lines.io import hashcache

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
MAX_HEADER = 100 * 1024 * 1024


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


def cached_sha256(path: Path) -> str:
    """sha256 of an input file, from the hash cache when the file is unchanged
    (``lines.io.hashcache``), else computed and recorded."""

    got = hashcache.lookup(path)
    if got is not None:
        return got
    key = hashcache.stamp(path)
    digest = sha256_file(path)
    hashcache.store(path, digest, key)
    return digest


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

    def byte_range(self, key: str) -> tuple[int, Path, int, int] | None:
        """Where ``key``'s raw (little-endian, row-major) bytes lie: (the open file descriptor
        this checkpoint reads from, its path, offset, length), or None when they are not stored
        as one plain byte range (a torch zip file). Lets a reader fetch many tensors with a few
        large positional reads of the very file whose header was checked."""
        return None

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
                self._sha = cached_sha256(files[0])
            else:
                lines = "".join(f"{p.name}:{cached_sha256(p)}\n" for p in sorted(files))
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
