"""``Resident``'s coalesced reads: every tensor equals its checkpoint's, whatever the chunk size,
the reader threads, the file layout (interleaved non-float tensors, a gap larger than ``_GAP``,
offsets that are not a multiple of the element size) or the format (sharded folders read by byte
range, torch files tensor by tensor); NaN/Inf refused with the file and key named."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import lines.readahead as ra
from lines.errors import LinesError
from lines.io import open_checkpoint, save_state_dict
from lines.readahead import Resident, _segments

CPU = torch.device("cpu")


def _raw_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor, str]]) -> Path:
    """A safetensors file laid out in the given order with no alignment padding (the library
    itself would sort by dtype and pad): the odd offsets a foreign writer may produce."""
    header, data, off = {}, b"", 0
    for name, t, code in tensors:
        b = t.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
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


def test_misaligned_offsets_and_interleaved_ints(tmp_path):
    g = torch.Generator().manual_seed(0)
    f16 = torch.randn(3, generator=g).half()  # 6 bytes: the next tensor starts at offset 6
    f32 = torch.randn(5, 7, generator=g)
    i64 = torch.arange(4)
    bf = torch.randn(9, generator=g).bfloat16()
    p = _raw_safetensors(
        tmp_path / "odd.safetensors",
        [("a", f16, "F16"), ("b", f32, "F32"), ("pos", i64, "I64"), ("c", bf, "BF16")],
    )
    ck = open_checkpoint(p)
    keys = ["a", "b", "c"]
    segs = _segments(ck, keys)
    assert segs is not None and len(segs) == 1  # the int tensor's 32 bytes are read along
    assert [k for k, _ in segs[0][3]] == keys
    for chunk in (1, 5, 64, 1 << 20):
        for workers in (1, 3):
            res = Resident([ck], keys, CPU, chunk_bytes=chunk, workers=workers)
            _assert_same(res, ck, keys)
    assert res.get(("b", None))[0].data_ptr() % 4 == 0  # offset 6: an aligned copy
    assert res.get(("b", (3, 9)))[0].tolist() == f32.reshape(-1)[3:9].tolist()


def test_gap_splits_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "_GAP", 16)
    a, big, b = torch.ones(4), torch.zeros(40, dtype=torch.int32), torch.full((3,), 2.0)
    p = _raw_safetensors(
        tmp_path / "gap.safetensors", [("a", a, "F32"), ("big", big, "I32"), ("b", b, "F32")]
    )
    ck = open_checkpoint(p)
    segs = _segments(ck, ["a", "b"])
    # a at [0, 16), the 160-byte int tensor skipped, b at [176, 188)
    assert [(s[1] - ck.byte_range("a")[1], s[2] - ck.byte_range("a")[1]) for s in segs] == [
        (0, 16),
        (176, 188),
    ]
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
    (shard / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    k: "model-1.safetensors" if k in names[:3] else "model-2.safetensors"
                    for k in names
                }
            }
        )
    )
    pt = tmp_path / "plain.pt"
    torch.save(sd, pt)
    cks = [open_checkpoint(st), open_checkpoint(shard), open_checkpoint(pt)]
    assert cks[1].byte_range("w4")[0].name == "model-2.safetensors"
    assert cks[2].byte_range("w0") is None  # read tensor by tensor
    res = Resident(cks, names, CPU, chunk_bytes=100, workers=2)
    for k in names:
        got = res.get((k, None))
        assert all(torch.equal(t, sd[k]) for t in got), k


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
    with pytest.raises(LinesError, match=r"t\.safetensors: truncated"):
        Resident([ck], ["x"], CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_misaligned_and_chunked_on_gpu(tmp_path):
    g = torch.Generator().manual_seed(2)
    tensors = [("a", torch.randn(3, generator=g).half(), "F16")]
    tensors += [(f"w{i}", torch.randn(257, 129, generator=g), "F32") for i in range(4)]
    ck = open_checkpoint(_raw_safetensors(tmp_path / "g.safetensors", tensors))
    keys = [n for n, _, _ in tensors]
    for chunk in (1000, 1 << 20):
        res = Resident([ck, ck], keys, torch.device("cuda"), chunk_bytes=chunk, workers=3)
        for k in keys:
            for t in res.get((k, None)):
                assert t.is_cuda and torch.equal(t.cpu(), ck.get(k)), k
