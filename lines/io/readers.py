"""Opening any checkpoint: a safetensors or torch file, or a Hugging Face / open_clip folder
(sharded or not), always lazily."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from lines.errors import LinesError
from lines.io.base import FOLDER_WEIGHT_FILES, MAX_HEADER, Checkpoint, TensorInfo
from lines.io.safetensors_reader import SafetensorsCheckpoint
from lines.io.torch_reader import TorchCheckpoint


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

    def byte_range(self, key: str) -> tuple[int, Path, int, int] | None:
        return self._owner[key].byte_range(key)

    def files(self) -> list[Path]:
        return [f for p in self._parts for f in p.files()]

    def close(self) -> None:
        for p in self._parts:
            p.close()


def open_file(path: Path) -> Checkpoint:
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint(path)
    if head[:2] == b"PK" or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return TorchCheckpoint(path)
    # Unknown suffix: sniff. A safetensors file starts with a small little-endian header length.
    if len(head) == 8 and struct.unpack("<Q", head)[0] < MAX_HEADER:
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
            parts = [open_file(p / s) for s in shard_names]
            ck: Checkpoint = ShardedCheckpoint(p, parts)
        else:
            ck = open_file(wf)
        ck.path = p
        return ck
    return open_file(p)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a whole (small) checkpoint into memory."""
    with open_checkpoint(path) as ck:
        return {k: ck.get(k).clone() for k in ck.keys()}


def iter_tensors(
    ck: Checkpoint, keys: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    for k in keys if keys is not None else ck.keys():
        yield k, ck.get(k)
