"""The streaming safetensors writer: header first, tensors appended in a declared order through
a background thread that also hashes, renamed into place only when complete."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from lines.errors import LinesError
from lines.io.base import ST_NAMES, TensorInfo
from lines.io.tempfiles import clean_stale, make_tmp_file, umask_mode

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
