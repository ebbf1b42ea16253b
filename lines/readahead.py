"""Read-ahead for the streaming engine: while the engine computes on one slice, background threads
read the next slices of every input, check them for NaN/Inf and, on a GPU, copy them to the device.

Reading is the bound of a merge (each input byte is used a few times at most), so the engine should
never wait for a read it could have started earlier. ``ReadAhead`` is told the order in which the
engine will ask for units (a key, or a flat slice of a key) and keeps ``depth`` units in flight;
when the engine asks for something else (a TIES fix-up re-reads an early key) it reads that unit
at once and re-seeds the prediction from there. Reads are positional (``os.preadv``) so threads
never share a file offset; file reads, torch kernels and host-to-device copies release the GIL, so
on a machine with spare cores reading overlaps computing. Memory: at most ``depth + 1`` units per
input are held, a few times the engine's working set.

On CUDA each worker owns a pinned staging buffer and a stream: the file is read straight into
pinned memory (no pageable copy), copied to the device asynchronously, and the worker waits for
its copy before reusing the buffer; the consumer records its stream on the result so the caching
allocator never hands the memory back to a worker while the consumer's kernels still read it.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from lines.errors import LinesError
from lines.io import Checkpoint
from lines.io.safetensors_reader import pread_full

Unit = tuple[str, tuple[int, int] | None]  # (key, flat [start, stop) or None for the whole tensor)


def default_workers(device: torch.device, num_inputs: int) -> int:
    """Reader threads: on a GPU machine one per input up to 8 (reads are the whole job there); on
    a CPU one or two (the cores are busy computing)."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, num_inputs, cpus - 1))
    return max(1, min(2, cpus - 1, num_inputs))


def check_finite(ck: Checkpoint, key: str, t: torch.Tensor) -> None:
    """Raise LinesError if ``t`` holds a NaN or an Inf. One float32 sum (NaN and ±Inf propagate
    through it) instead of ``isfinite(t).all()``, which is several times slower on a CPU; only a
    non-finite sum, which also happens when finite values overflow, gets the exact test.
    (A numpy sum in the reader threads was tried: slower on both the 2-core CPU and the H100 host,
    see benchmarks/NOTES.md.)"""
    if not t.is_floating_point() or t.numel() == 0:
        return
    if math.isfinite(float(t.sum(dtype=torch.float32))):
        return
    if bool(torch.isfinite(t).all()):
        return  # overflow of a large finite sum, not a bad value
    kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
    raise LinesError(f"{ck.path}: {kind} in tensor '{key}'")


class _Staging(threading.local):
    """Per-thread pinned buffer and CUDA stream."""

    buf: torch.Tensor | None = None
    stream: torch.cuda.Stream | None = None


class ReadAhead:
    """Reads units of several checkpoints in order, ahead of the consumer.

    ``get(unit)`` returns one tensor per checkpoint for ``unit``, on ``device`` in its stored
    dtype, each already checked for NaN/Inf unless ``check`` is false or the same (checkpoint,
    unit) was checked before.
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        order: Sequence[Unit],
        device: torch.device,
        *,
        depth: int = 2,
        workers: int | None = None,
        check: bool = True,
    ):
        self.cks = list(checkpoints)
        self.order = list(order)
        self._pos = {u: i for i, u in enumerate(self.order)}
        self.device = device
        self.depth = max(0, depth)
        self.check = check
        self._checked: set[tuple[int, Hashable]] = set()
        self._lock = threading.Lock()
        n = workers if workers is not None else default_workers(device, len(self.cks))
        # workers = 0: read in the caller's thread, nothing ahead
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="lines-read") if n > 0 else None
        self._pending: OrderedDict[Unit, list[Future[torch.Tensor]]] = OrderedDict()
        self._cuda = device.type == "cuda"
        self._staging = _Staging()
        # each reader's pinned buffer is allocated once, at the largest unit it will read
        self._max_bytes = 0
        if self._cuda:
            for key, span in self.order:
                info = self.cks[0].info(key)
                n = info.numel if span is None else span[1] - span[0]
                esize = torch.empty((), dtype=info.dtype).element_size()
                self._max_bytes = max(self._max_bytes, n * esize)
        self._closed = False

    # -- reading one (checkpoint, unit) in a worker thread

    def _read_cpu(self, ck: Checkpoint, unit: Unit) -> torch.Tensor:
        key, span = unit
        return ck.get(key) if span is None else ck.get_flat(key, *span)

    def _read(self, i: int, unit: Unit) -> torch.Tensor:
        ck = self.cks[i]
        key, span = unit
        if not self._cuda:
            t = self._read_cpu(ck, unit)
            self._maybe_check(i, ck, unit, t)
            return t
        info = ck.info(key)
        start, stop = span if span is not None else (0, info.numel)
        esize = torch.empty((), dtype=info.dtype).element_size()
        nbytes = (stop - start) * esize
        st = self._staging
        if st.stream is None:
            st.stream = torch.cuda.Stream(device=self.device)
        if st.buf is None or st.buf.numel() < nbytes:
            st.buf = None
            size = max(nbytes, self._max_bytes, 1 << 20)
            st.buf = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        host = ck.read_flat_into(key, start, stop, st.buf)
        self._maybe_check(i, ck, unit, host)
        with torch.cuda.stream(st.stream):
            dev = host.to(self.device, non_blocking=True)
        st.stream.synchronize()  # the pinned buffer is reused by this thread's next read
        shape = info.shape if span is None else (stop - start,)
        return dev.reshape(shape)

    def _maybe_check(self, i: int, ck: Checkpoint, unit: Unit, t: torch.Tensor) -> None:
        if not self.check:
            return
        tag = (i, unit)
        with self._lock:
            if tag in self._checked:
                return
        check_finite(ck, unit[0], t)
        with self._lock:
            self._checked.add(tag)

    # -- scheduling

    def _submit(self, unit: Unit) -> list[Future[torch.Tensor]]:
        assert self._pool is not None
        return [self._pool.submit(self._read, i, unit) for i in range(len(self.cks))]

    def get(self, unit: Unit) -> list[torch.Tensor]:
        if self._closed:
            raise RuntimeError("ReadAhead is closed")
        if self._pool is None:
            return [self._read(i, unit) for i in range(len(self.cks))]
        futs = self._pending.pop(unit, None)
        if futs is None:
            futs = self._submit(unit)
        # keep only the next `depth` units of the predicted order in flight
        pos = self._pos.get(unit)
        want: list[Unit] = []
        if pos is not None and self.order:
            # cyclic: the last unit of one pass predicts the first units of the next pass
            for j in range(1, min(self.depth, len(self.order) - 1) + 1):
                want.append(self.order[(pos + j) % len(self.order)])
        for u in list(self._pending):
            if u not in want:
                self._pending.pop(u)  # a misprediction: its result is dropped when it finishes
        for u in want:
            if u not in self._pending:
                self._pending[u] = self._submit(u)
        out = [f.result() for f in futs]
        if self._cuda:
            cur = torch.cuda.current_stream(self.device)
            for t in out:
                t.record_stream(cur)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._staging = _Staging()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Resident:
    """Every unit of every input read once and held on ``device``: the same ``get(unit)`` as
    ``ReadAhead``, for a GPU with room for all the inputs (the engine's statistics and merge passes
    then never touch the disk or the PCIe bus again).

    Inputs whose tensors are plain byte ranges of a file (safetensors, ``Checkpoint.byte_range``)
    are read with few large positional reads of the checkpoint's own open file: each file's ranges
    are coalesced into segments (``plan_segments``), each segment gets one device buffer, and its
    ``chunk_bytes`` pieces, of all inputs at once, are spread over ``workers`` threads. On CUDA a
    thread reads into one of two pinned buffers while the other's host-to-device copy runs. Every
    tensor is then a view of its segment's buffer. Other inputs (torch zip files) are read tensor
    by tensor. NaN/Inf: one float32 sum per tensor, read back with one copy per input; only a
    non-finite sum gets the exact test (``check_finite``). ``get`` returns views (a slice of a
    key is a view of its flat tensor)."""

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        keys: Sequence[str],
        device: torch.device,
        *,
        chunk_bytes: int = 8 << 20,
        workers: int | None = None,
        check: bool = True,
    ):
        if device.type == "cuda" and device.index is None:  # worker threads start on device 0
            device = torch.device("cuda", torch.cuda.current_device())
        self.cks = list(checkpoints)
        self.device = device
        self._views: list[dict[str, torch.Tensor]] = [{} for _ in self.cks]
        self._keys = list(dict.fromkeys(keys))
        self._chunk = max(1, chunk_bytes)
        self._stop = threading.Event()
        jobs: list[_Job] = []
        placed: list[tuple[int, str, torch.Tensor, int]] = []  # (input, key, segment, offset)
        slow: list[int] = []
        for i, ck in enumerate(self.cks):
            plan = plan_segments(ck, self._keys)
            if plan is None:
                slow.append(i)
                continue
            for seg in plan:
                buf = torch.empty(seg.stop - seg.start, dtype=torch.uint8, device=device)
                for a in range(seg.start, seg.stop, self._chunk):
                    b = min(a + self._chunk, seg.stop)
                    jobs.append(
                        _Job(
                            seg.fd,
                            seg.path,
                            seg.members[0][0],
                            a,
                            buf[a - seg.start : b - seg.start],
                        )
                    )
                placed += [(i, key, buf, off - seg.start) for key, off in seg.members]
        # the segments were allocated on this thread's stream: the workers' copies wait for it
        ready = None
        if device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(device))
        n = workers if workers is not None else resident_workers(device)
        n = max(1, min(n, len(jobs) + len(slow)))
        with ThreadPoolExecutor(n, "lines-resident") as pool:
            futs = [pool.submit(self._read_jobs, jobs[w::n], ready) for w in range(n)]
            futs += [pool.submit(self._load_slow, i) for i in slow]
            try:
                for f in futs:
                    f.result()
            finally:
                self._stop.set()  # after an error the other workers stop at their next piece
        for i, key, buf, off in placed:
            info = self.cks[i].info(key)
            self._views[i][key] = buf[off : off + info.nbytes].view(info.dtype).view(info.shape)
        for i, ck in enumerate(self.cks):  # zero-size tensors have no bytes to read
            for key in self._keys:
                if key not in self._views[i]:
                    info = ck.info(key)
                    self._views[i][key] = torch.empty(info.shape, dtype=info.dtype, device=device)
        if check:
            self._check()

    def _read_jobs(self, jobs: Sequence[_Job], ready: torch.cuda.Event | None) -> None:
        if not jobs:
            return
        if self.device.type != "cuda":
            for job in jobs:  # straight into the destination
                if self._stop.is_set():
                    return
                job.read_into(job.dst)
            return
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream(device=self.device)
            assert ready is not None
            stream.wait_event(ready)
            size = max(job.dst.numel() for job in jobs)
            bufs = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            done: list[torch.cuda.Event | None] = [None, None]
            try:
                for j, job in enumerate(jobs):
                    if self._stop.is_set():
                        return
                    b = j % 2
                    ev = done[b]
                    if ev is not None:
                        ev.synchronize()  # this buffer's previous copy has left it
                    host = bufs[b][: job.dst.numel()]
                    job.read_into(host)
                    with torch.cuda.stream(stream):
                        job.dst.copy_(host, non_blocking=True)
                        ev = torch.cuda.Event()
                        ev.record(stream)
                    done[b] = ev
            finally:
                stream.synchronize()  # no copy outlives this call, whatever happened

    def _load_slow(self, i: int) -> None:
        """Tensor by tensor, for an input without plain byte ranges."""
        ck = self.cks[i]
        for key in self._keys:
            if self._stop.is_set():
                return
            t = ck.get(key)
            self._views[i][key] = t.to(self.device) if self.device.type == "cuda" else t

    def _check(self) -> None:
        for i, ck in enumerate(self.cks):
            items = [
                (k, t) for k, t in self._views[i].items() if t.is_floating_point() and t.numel()
            ]
            if not items:
                continue
            sums = torch.stack([t.sum(dtype=torch.float32) for _, t in items]).tolist()
            for (key, t), total in zip(items, sums, strict=True):
                if not math.isfinite(total):
                    check_finite(ck, key, t)  # raises unless a large finite sum overflowed

    def get(self, unit: Unit) -> list[torch.Tensor]:
        key, span = unit
        if span is None:
            return [v[key] for v in self._views]
        return [v[key].reshape(-1)[span[0] : span[1]] for v in self._views]

    def close(self) -> None:
        self._views = [{} for _ in self.cks]

    def __enter__(self) -> Resident:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Bytes between two tensors of one file that a coalesced read takes along rather than splitting
# the segment (non-float tensors, alignment padding).
_GAP = 1 << 20


def resident_workers(device: torch.device) -> int:
    """Reader threads for ``Resident``: on a GPU machine all but one core up to 16 (positional
    reads from the page cache scale with threads: 0.42 s with one, 0.10 s with 8 and 0.07 s with
    15 for 3.2 GB on the H100 host, benchmarks/NOTES.md); on a CPU two."""
    cpus = os.cpu_count() or 1
    return max(1, min(16 if device.type == "cuda" else 2, cpus - 1))


@dataclass
class Segment:
    """Bytes [start, stop) of one open file, holding ``members`` = [(key, file offset)]."""

    fd: int
    path: Path
    start: int
    stop: int
    members: list[tuple[str, int]]


@dataclass
class _Job:
    """One piece of a segment: file bytes from ``offset`` into ``dst`` (the first key of its
    segment names it in errors)."""

    fd: int
    path: Path
    key: str
    offset: int
    dst: torch.Tensor

    def read_into(self, buf: torch.Tensor) -> None:
        pread_full(
            self.fd, buf.numpy(), self.offset, self.path, f"'{self.key}' (byte {self.offset})"
        )


def plan_segments(ck: Checkpoint, keys: Sequence[str]) -> list[Segment] | None:
    """``keys``' byte ranges coalesced into segments, or None when some key has no plain byte
    range. A range joins the previous segment when it starts at most ``_GAP`` bytes after it and
    at an offset within the segment that is a multiple of its element size (so every tensor is a
    view of its segment's buffer)."""
    ranges = []
    for key in dict.fromkeys(keys):
        r = ck.byte_range(key)
        if r is None:
            return None
        if r[3]:
            esize = torch.empty((), dtype=ck.info(key).dtype).element_size()
            ranges.append((*r, key, esize))
    ranges.sort(key=lambda r: (str(r[1]), r[2]))
    segs: list[Segment] = []
    for fd, path, off, nbytes, key, esize in ranges:
        last = segs[-1] if segs else None
        if (
            last is not None
            and last.path == path
            and last.stop <= off <= last.stop + _GAP
            and (off - last.start) % esize == 0
        ):
            last.members.append((key, off))
            last.stop = off + nbytes
        else:
            segs.append(Segment(fd, path, off, off + nbytes, [(key, off)]))
    return segs


def fits_resident(
    checkpoints: Sequence[Checkpoint], keys: Sequence[str], device: torch.device
) -> bool:
    """Whether every input's ``keys`` fit on a CUDA device with room to spare for the merge's
    temporaries (a third of the free memory is left for them), counting the bytes ``Resident``
    will hold (its segments, gaps included)."""
    if device.type != "cuda":
        return False
    need = 0
    for ck in checkpoints:
        plan = plan_segments(ck, keys)
        if plan is None:
            need += sum(ck.info(k).nbytes for k in dict.fromkeys(keys))
        else:
            need += sum(seg.stop - seg.start for seg in plan)
    free, _ = torch.cuda.mem_get_info(device)
    return need < free * 2 // 3
