"""``Resident``'s coalesced reads: every tensor equals its checkpoint's, whatever the chunk size,
the reader threads, the file layout (interleaved non-float tensors, a gap larger than ``_GAP``,
offsets that are not a multiple of the element size) or the format (sharded folders read by byte
range, torch files tensor by tensor); reads go through the checkpoint's own open file; NaN/Inf
refused with the file and key named; ``fits_resident`` counts what the plan reads."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

import lines.readahead as ra
from lines.errors import LinesError
from lines.io import open_checkpoint, save_state_dict
from lines.readahead import Resident, plan_segments

CPU = torch.device("cpu")
ST = {torch.float16: "F16", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
      torch.bfloat16: "BF16", torch.bool: "BOOL", torch.int32: "I32"}  # fmt: skip


def _raw_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> Path:
    """A safetensors file laid out in the given order with no alignment padding (the library
    itself would sort by dtype and pad): the odd offsets a foreign writer may produce."""
    header, data, off = {}, b"", 0
    for name, t in tensors:
        b = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [off, off + len(b)],
        }
        data += b
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def _assert_same(res: Resident, ck, keys) -> None:
    for k in keys:
        got = res.get((k, None))[0]
        want = ck.get(k)
        assert got.dtype == want.dtype and got.shape == want.shape, k
        assert torch.equal(got, want), k


def test_odd_offsets_every_dtype_and_interleaved_ints(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = [
        ("a", torch.randn(3, generator=g).half()),  # 6 bytes: the next starts at offset 6
        ("b", torch.randn(5, 7, generator=g)),
        ("pos", torch.arange(4)),  # not asked for: read along inside the segment
        ("c", torch.randn(9, generator=g).bfloat16()),
        ("flag", torch.tensor([True, False, True])),  # 3 bytes
        ("d", torch.randn(2, 3, generator=g).double()),
        ("e", torch.randn(()).double()),  # 0-d
    ]
    ck = open_checkpoint(_raw_safetensors(tmp_path / "odd.safetensors", tensors))
    keys = ["a", "b", "c", "flag", "d", "e"]
    segs = plan_segments(ck, keys)
    # b (f32 at byte 6 of a's segment) and d (f64 after the 3-byte bool) start new segments
    assert [[k for k, _ in s.members] for s in segs] == [["a"], ["b", "c", "flag"], ["d", "e"]]
    for chunk in (1, 5, 64, 1 << 20):
        for workers in (1, 3):
            res = Resident([ck], keys, CPU, chunk_bytes=chunk, workers=workers)
            _assert_same(res, ck, keys)
    assert res.get(("b", (3, 9)))[0].tolist() == tensors[1][1].reshape(-1)[3:9].tolist()


def test_gap_splits_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "_GAP", 16)
    tensors = [("a", torch.ones(4)), ("big", torch.zeros(40, dtype=torch.int32))]
    tensors.append(("b", torch.full((3,), 2.0)))
    ck = open_checkpoint(_raw_safetensors(tmp_path / "gap.safetensors", tensors))
    segs = plan_segments(ck, ["a", "b", "a"])  # a repeated key is planned once
    base = ck.byte_range("a")[2]
    # a at [0, 16), the 160-byte int tensor skipped, b at [176, 188)
    assert [(s.start - base, s.stop - base) for s in segs] == [(0, 16), (176, 188)]
    _assert_same(Resident([ck], ["a", "b"], CPU, chunk_bytes=7), ck, ["a", "b"])


def test_many_inputs_sharded_and_torch(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {f"w{i}": torch.randn(13, 11, generator=g) for i in range(6)}
    sd["empty"] = torch.empty(0)
    st = save_state_dict(tmp_path / "plain.safetensors", sd)
    shard = tmp_path / "sharded"
    shard.mkdir()
    names = list(sd)
    save_state_dict(shard / "model-1.safetensors", {k: sd[k] for k in names[:3]})
    save_state_dict(shard / "model-2.safetensors", {k: sd[k] for k in names[3:]})
    where = {k: "model-1.safetensors" if k in names[:3] else "model-2.safetensors" for k in names}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": where}))
    pt = tmp_path / "plain.pt"
    torch.save(sd, pt)
    cks = [open_checkpoint(st), open_checkpoint(shard), open_checkpoint(pt)]
    assert cks[1].byte_range("w4")[1].name == "model-2.safetensors"
    assert cks[2].byte_range("w0") is None  # read tensor by tensor
    res = Resident(cks, names, CPU, chunk_bytes=100, workers=2)
    for k in names:
        got = res.get((k, None))
        assert all(torch.equal(t, sd[k]) for t in got), k


def test_reads_the_file_that_was_checked(tmp_path):
    """A file replaced after its header was checked: the checkpoint's own descriptor still reads
    the old one, as the streaming reader does."""
    p = save_state_dict(tmp_path / "x.safetensors", {"x": torch.ones(3)})
    ck = open_checkpoint(p)
    save_state_dict(tmp_path / "new.safetensors", {"x": torch.full((3,), 7.0)})
    os.replace(tmp_path / "new.safetensors", p)
    got = Resident([ck], ["x"], CPU).get(("x", None))[0]
    assert got.tolist() == [1.0, 1.0, 1.0] == ck.get("x").tolist()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_named(tmp_path, bad):
    ok = save_state_dict(tmp_path / "ok.safetensors", {"x": torch.ones(10), "y": torch.ones(4)})
    y = torch.ones(4)
    y[2] = bad
    broken = save_state_dict(tmp_path / "broken.safetensors", {"x": torch.ones(10), "y": y})
    cks = [open_checkpoint(ok), open_checkpoint(broken)]
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(LinesError, match=rf"broken\.safetensors: {kind} in tensor 'y'"):
        Resident(cks, ["x", "y"], CPU)
    # large finite values whose float32 sum overflows are not refused
    huge = save_state_dict(tmp_path / "huge.safetensors", {"x": torch.full((10,), 3e38)})
    Resident([open_checkpoint(huge)], ["x"], CPU)


def test_truncated_file_named(tmp_path):
    p = save_state_dict(tmp_path / "t.safetensors", {"x": torch.ones(1000)})
    ck = open_checkpoint(p)
    with open(p, "r+b") as f:  # shortened after the header was validated
        f.truncate(p.stat().st_size - 100)
    with pytest.raises(LinesError, match=r"t\.safetensors: truncated file while reading 'x'"):
        Resident([ck], ["x"], CPU, workers=2, chunk_bytes=512)


def test_fits_counts_the_gaps(tmp_path, monkeypatch):
    """fits_resident sizes what Resident will hold (gaps read along included), not the tensors
    alone: a plan that reads 100× the float bytes does not fit where the float bytes would."""
    tensors = []
    for i in range(4):
        tensors += [(f"w{i}", torch.ones(2)), (f"pad{i}", torch.zeros(2000, dtype=torch.int64))]
    ck = open_checkpoint(_raw_safetensors(tmp_path / "gaps.safetensors", tensors))
    keys = [f"w{i}" for i in range(4)]
    held = sum(s.stop - s.start for s in plan_segments(ck, keys))
    assert held == 3 * (8 + 16000) + 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 100, 10**9))
    assert not ra.fits_resident([ck], keys, torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * held, 10**9))
    assert ra.fits_resident([ck], keys, torch.device("cuda", 0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_odd_offsets_and_chunks_on_gpu(tmp_path):
    g = torch.Generator().manual_seed(2)
    tensors = [("a", torch.randn(3, generator=g).half())]
    tensors += [(f"w{i}", torch.randn(257, 129, generator=g)) for i in range(4)]
    ck = open_checkpoint(_raw_safetensors(tmp_path / "g.safetensors", tensors))
    keys = [n for n, _ in tensors]
    for device in ("cuda", f"cuda:{torch.cuda.device_count() - 1}"):
        for chunk in (1000, 1 << 20):
            res = Resident([ck, ck], keys, torch.device(device), chunk_bytes=chunk, workers=3)
            for k in keys:
                for t in res.get((k, None)):
                    assert t.is_cuda and torch.equal(t.cpu(), ck.get(k)), k
