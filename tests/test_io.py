"""Checkpoint I/O: the lazy readers (safetensors, torch files, Hugging Face folders), the atomic
streaming writer, and folder outputs that load with ``from_pretrained``."""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import bert_shapes, random_state_dict, snapshot, write_family

from lines.errors import LinesError
from lines.io import (
    SafetensorsCheckpoint,
    SafetensorsWriter,
    ShardedCheckpoint,
    TensorInfo,
    TorchCheckpoint,
    load_state_dict,
    open_checkpoint,
    save_state_dict,
)


def mixed_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 7),
        "scalar": torch.tensor(2.5),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------
# safetensors


def test_reads_official_safetensors_every_dtype(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"who": "test"})
    with open_checkpoint(path) as ck:
        assert isinstance(ck, SafetensorsCheckpoint)
        assert set(ck.keys()) == set(sd)
        assert ck.metadata == {"who": "test"}
        for k, v in sd.items():
            assert ck.info(k) == TensorInfo(tuple(v.shape), v.dtype)
            got = ck.get(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
        assert ck.get("empty").shape == (0, 7)
        assert ck.nbytes() == sum(v.numel() * v.element_size() for v in sd.values())


def test_get_flat_reads_exact_slices(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    path = save_state_dict(tmp_path / "m.safetensors", sd)
    with open_checkpoint(path) as ck:
        for k, v in sd.items():
            flat = v.reshape(-1)
            n = flat.numel()
            for start, stop in [(0, n), (1, max(1, n - 1)), (n // 2, n), (0, 0)]:
                got = ck.get_flat(k, start, stop)
                assert got.dtype == v.dtype
                assert torch.equal(got, flat[start:stop]), (k, start, stop)


def test_written_files_load_with_official_reader(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    path = save_state_dict(tmp_path / "ours.safetensors", sd, {"format": "pt", "x": "1"})
    loaded = safetensors.torch.load_file(str(path))
    assert_same(loaded, sd)
    with safetensors.safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt", "x": "1"}
    # and by our reader, round trip
    assert_same(load_state_dict(path), sd)


def test_writer_permissions_follow_umask(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; a committed output must get the usual umask mode."""
    mask = os.umask(0o022)
    try:
        path = save_state_dict(tmp_path / "m.safetensors", {"a": torch.zeros(2)})
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    path = save_state_dict(
        tmp_path / "m.safetensors", {"a": torch.randn(100), "b": torch.randn(50)}
    )
    data = path.read_bytes()
    for cut, words in [
        (4, "shorter than 8 bytes"),
        (40, "header"),
        (len(data) - 10, "truncated file"),
    ]:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(LinesError, match=words) as e:
            open_checkpoint(bad)
        assert str(bad) in str(e.value)
    # the last tensor in storage order is named
    with pytest.raises(LinesError, match="'b'"):
        open_checkpoint(tmp_path / f"cut{len(data) - 10}.safetensors")


@pytest.mark.parametrize(
    "header, words",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"a": {"dtype": "F32", "shape": [4]}}', "corrupt safetensors entry for 'a'"),
        (b'{"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}', "entry for 'a'"),
        (b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}', "size mismatch"),
    ],
)
def test_corrupt_safetensors_header_is_refused(tmp_path: Path, header: bytes, words: str) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(LinesError, match=words):
        open_checkpoint(bad)


def test_huge_header_length_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(LinesError, match="corrupt or truncated safetensors header"):
        open_checkpoint(bad)


# ----------------------------------------------------------------------------------------------
# torch files


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_torch_state_dict_files(tmp_path: Path, wrapper: str | None, suffix: str) -> None:
    sd = random_state_dict(bert_shapes(1), 1)
    sd["buf"] = torch.arange(3)
    path = tmp_path / f"m{suffix}"
    torch.save(sd if wrapper is None else {wrapper: sd}, path)
    with open_checkpoint(path) as ck:
        assert isinstance(ck, TorchCheckpoint)
        assert ck.keys() == list(sd)
        for k, v in sd.items():
            assert torch.equal(ck.get(k), v)
            assert torch.equal(ck.get_flat(k, 1, 3), v.reshape(-1)[1:3])


def test_torch_tensors_are_copies_of_the_mapping(tmp_path: Path) -> None:
    """Tensors of a memory-mapped file come back as private copies (the mapped pages are released
    after each read), so they stay valid and writable after the checkpoint is closed."""
    sd = {"a": torch.randn(5000), "b": torch.randn(3, 3)}
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    ck = open_checkpoint(path)
    a = ck.get("a")
    again = ck.get("a")
    ck.close()
    assert torch.equal(a, sd["a"]) and torch.equal(again, sd["a"])
    a.add_(1)
    assert torch.equal(again, sd["a"])


def test_legacy_non_zip_torch_file(tmp_path: Path) -> None:
    sd = random_state_dict(bert_shapes(1), 2)
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] != b"PK"
    assert_same(load_state_dict(path), sd)


def test_unknown_suffix_is_sniffed(tmp_path: Path) -> None:
    sd = {"encoder.layer.0.w": torch.randn(3)}
    st = save_state_dict(tmp_path / "a.safetensors", sd)
    st_weird = tmp_path / "a.weights"
    st_weird.write_bytes(st.read_bytes())
    pt_weird = tmp_path / "b.weights"
    torch.save(sd, pt_weird)
    assert isinstance(open_checkpoint(st_weird), SafetensorsCheckpoint)
    assert isinstance(open_checkpoint(pt_weird), TorchCheckpoint)
    assert_same(load_state_dict(pt_weird), sd)


class _Marker:
    """Unpickling this would create a file: weights_only must refuse it without running it."""

    path = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_not_run(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "PWNED"
    _Marker.path = str(marker)
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"w": torch.zeros(2), "x": _Marker()}, path)
    else:
        path.write_bytes(pickle.dumps(_Marker()))
    with pytest.raises(LinesError, match="not a plain state dict") as e:
        open_checkpoint(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_pickled_module_and_non_state_dicts_are_refused(tmp_path: Path) -> None:
    cases = {
        "module.pt": torch.nn.Linear(2, 2),  # a pickled nn.Module
        "list.pt": [torch.zeros(1)],
        "tensor.pt": torch.zeros(3),
        "nested.pt": {"a": torch.zeros(1), "opt": {"lr": 0.1}},
        "intkey.pt": {0: torch.zeros(1)},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    with pytest.raises(LinesError, match=r"module\.pt: not a plain state dict.*torch\.nn"):
        open_checkpoint(tmp_path / "module.pt")
    with pytest.raises(LinesError, match=r"list\.pt: not a plain state dict \(found list\)"):
        open_checkpoint(tmp_path / "list.pt")
    with pytest.raises(LinesError, match=r"tensor\.pt: not a plain state dict \(found Tensor\)"):
        open_checkpoint(tmp_path / "tensor.pt")
    with pytest.raises(LinesError, match=r"nested\.pt: .*entry 'opt' is dict"):
        open_checkpoint(tmp_path / "nested.pt")
    with pytest.raises(LinesError, match=r"intkey\.pt: not a plain state dict \(entry 0"):
        open_checkpoint(tmp_path / "intkey.pt")


def test_truncated_and_corrupt_torch_files(tmp_path: Path) -> None:
    torch.save({"a": torch.randn(1000)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("trunc.pt", "garbage.pt", "empty.pt"):
        with pytest.raises(LinesError) as e:
            open_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / name)) and "\n" not in msg, msg


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(LinesError, match="no such file or folder"):
        open_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(LinesError, match="no weights found in folder"):
        open_checkpoint(tmp_path / "emptydir")


# ----------------------------------------------------------------------------------------------
# Hugging Face folders (a real BertModel from a tiny BertConfig)


@pytest.fixture(scope="module")
def transformers_mod():
    from lines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def tiny_bert(transformers_mod, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers_mod.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return transformers_mod.BertModel(cfg)


def test_hf_folder_single_file(tmp_path: Path, transformers_mod) -> None:
    model = tiny_bert(transformers_mod)
    model.save_pretrained(tmp_path / "bert")
    assert (tmp_path / "bert" / "model.safetensors").is_file()
    with open_checkpoint(tmp_path / "bert") as ck:
        assert ck.path == tmp_path / "bert"
        assert isinstance(ck, SafetensorsCheckpoint)
        assert len(ck.files()) == 1
        sd = model.state_dict()
        assert set(ck.keys()) == set(sd)
        for k, v in sd.items():
            assert torch.equal(ck.get(k), v), k


def test_hf_folder_sharded(tmp_path: Path, transformers_mod) -> None:
    model = tiny_bert(transformers_mod)
    model.save_pretrained(tmp_path / "bert", max_shard_size="20KB")
    shards = sorted((tmp_path / "bert").glob("model-*.safetensors"))
    assert len(shards) > 1
    assert (tmp_path / "bert" / "model.safetensors.index.json").is_file()
    with open_checkpoint(tmp_path / "bert") as ck:
        assert isinstance(ck, ShardedCheckpoint)
        assert sorted(ck.files()) == shards
        sd = model.state_dict()
        assert set(ck.keys()) == set(sd)
        for k, v in sd.items():
            assert torch.equal(ck.get(k), v), k
            assert torch.equal(ck.get_flat(k, 0, 5), v.reshape(-1)[:5]), k
        digest = ck.sha256()
    with open_checkpoint(tmp_path / "bert") as ck2:
        assert ck2.sha256() == digest


def test_hf_folder_corrupt_index(tmp_path: Path, transformers_mod) -> None:
    model = tiny_bert(transformers_mod)
    model.save_pretrained(tmp_path / "bert", max_shard_size="20KB")
    (tmp_path / "bert" / "model.safetensors.index.json").write_text("{broken")
    with pytest.raises(LinesError, match="corrupt shard index"):
        open_checkpoint(tmp_path / "bert")


@pytest.mark.parametrize("sharded", [False, True])
def test_folder_output_loads_with_from_pretrained(
    tmp_path: Path, transformers_mod, run_cli, sharded: bool
) -> None:
    """``--out somedir`` copies config.json (and other non-weight files) from the pretrained
    folder, so AutoModel loads the result and its weights are exactly the merged ones."""
    pre = tiny_bert(transformers_mod, 0)
    kw = {"max_shard_size": "20KB"} if sharded else {}
    pre.save_pretrained(tmp_path / "pre", **kw)
    fts = []
    for i in range(2):
        ft = tiny_bert(transformers_mod, 0)
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ft.save_pretrained(tmp_path / f"ft{i}")
        fts.append(ft.state_dict())
    out = tmp_path / "merged"
    r = run_cli(
        [
            "merge",
            "--pretrained",
            tmp_path / "pre",
            "--finetuned",
            tmp_path / "ft0",
            tmp_path / "ft1",
            "--method",
            "task_arithmetic",
            "--lines-beta",
            "0.5",
            "--out",
            out,
            "--no-progress",
        ]
    )
    assert r.code == 0, r.err
    assert (out / "config.json").read_text() == (tmp_path / "pre" / "config.json").read_text()
    assert (out / "model.safetensors").is_file() and (out / "lines_manifest.json").is_file()
    assert not list(out.glob("model-*.safetensors"))  # the shards are not copied
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    written = safetensors.torch.load_file(str(out / "model.safetensors"))
    loaded = transformers_mod.AutoModel.from_pretrained(out)
    assert type(loaded).__name__ == "BertModel"
    sd = loaded.state_dict()
    assert set(sd) == set(written)
    for k, v in written.items():
        assert torch.equal(sd[k], v), k
    # the last block gets λ(L) = α + β = 1/N + 0.5 = 1 times τ_MTL = τ_0 + τ_1
    k = "encoder.layer.2.output.dense.weight"
    base = pre.state_dict()[k]
    expect = base + 1.0 * ((fts[0][k] - base) + (fts[1][k] - base))
    assert torch.allclose(written[k], expect, atol=1e-6)
    manifest = json.loads((out / "lines_manifest.json").read_text())
    assert manifest["family"] == "bert" and manifest["num_blocks"] == 3


# ----------------------------------------------------------------------------------------------
# The atomic writer


def specs_of(sd: dict[str, torch.Tensor]) -> list[tuple[str, TensorInfo]]:
    return [(k, TensorInfo(tuple(v.shape), v.dtype)) for k, v in sd.items()]


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    target = tmp_path / "out.safetensors"
    before = snapshot(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with SafetensorsWriter(target, specs_of(sd)) as w:
            for i, (k, v) in enumerate(sd.items()):
                if i == 3:
                    raise KeyboardInterrupt  # e.g. Ctrl-C, or a NaN found in the next input
                w.write(k, v)
    assert snapshot(tmp_path) == before
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_keeps_existing_target(tmp_path: Path) -> None:
    target = save_state_dict(tmp_path / "out.safetensors", {"old": torch.ones(3)})
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="only 1/2 tensors written"):
        with SafetensorsWriter(target, specs_of({"a": torch.zeros(2), "b": torch.zeros(2)})) as w:
            w.write("a", torch.zeros(2))
            w.commit()
    assert snapshot(tmp_path) == before


def test_writer_checks_order_shape_and_dtype(tmp_path: Path) -> None:
    sd = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    with SafetensorsWriter(tmp_path / "o.safetensors", specs_of(sd)) as w:
        with pytest.raises(RuntimeError, match="got 'b', expected 'a'"):
            w.write("b", sd["b"])
        with pytest.raises(RuntimeError, match="'a' has"):
            w.write("a", torch.zeros(4))
        with pytest.raises(RuntimeError, match="'a' has"):
            w.write("a", torch.zeros(2, 2, dtype=torch.float16))
        w.abort()
    assert list(tmp_path.iterdir()) == []


def test_write_parts_and_rewrite_parts(tmp_path: Path) -> None:
    full = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    specs = specs_of({"x": full, "y": torch.zeros(2)})
    with SafetensorsWriter(tmp_path / "o.safetensors", specs) as w:
        w.write_parts("x", [full.reshape(-1)[:5], full.reshape(-1)[5:]])
        w.write("y", torch.zeros(2))
        w.rewrite_parts("x", [(full * 2).reshape(-1)[:7], (full * 2).reshape(-1)[7:]])
        w.commit()
    got = safetensors.torch.load_file(str(tmp_path / "o.safetensors"))
    assert torch.equal(got["x"], full * 2)
    with SafetensorsWriter(tmp_path / "p.safetensors", specs) as w:
        with pytest.raises(RuntimeError, match="got 5/12 entries"):
            w.write_parts("x", [full.reshape(-1)[:5]])
        w.abort()
    assert not (tmp_path / "p.safetensors").exists()


def test_rewrite_and_set_metadata(tmp_path: Path) -> None:
    sd = mixed_state_dict()
    target = tmp_path / "o.safetensors"
    with SafetensorsWriter(target, specs_of(sd), {"format": "pt"}) as w:
        with pytest.raises(RuntimeError, match="not written yet"):
            w.rewrite("f32", sd["f32"])
        for k, v in sd.items():
            w.write(k, v)
        w.rewrite("f32", sd["f32"] * 3)
        w.rewrite("bf16", sd["bf16"] + 1)
        w.set_metadata("norms", json.dumps({"l1": 1.5}))
        w.set_metadata("format", "pt")
        with pytest.raises(RuntimeError, match="reserved header room"):
            w.set_metadata("big", "x" * 10_000)
        w.commit()
    expect = dict(sd, f32=sd["f32"] * 3, bf16=sd["bf16"] + 1)
    assert_same(safetensors.torch.load_file(str(target)), expect)
    with safetensors.safe_open(str(target), "pt") as f:
        assert json.loads(f.metadata()["norms"]) == {"l1": 1.5}
    with open_checkpoint(target) as ck:
        assert json.loads(ck.metadata["norms"]) == {"l1": 1.5}


def test_save_state_dict_is_atomic_on_bad_dtype(tmp_path: Path) -> None:
    with pytest.raises(LinesError, match="cannot store dtype"):
        save_state_dict(tmp_path / "o.safetensors", {"c": torch.zeros(2, dtype=torch.complex64)})
    assert list(tmp_path.iterdir()) == []


def test_merge_outputs_are_readable_by_official_reader(tmp_path: Path) -> None:
    from lines.engine import merge_checkpoints
    from lines.merging import make_method
    from lines.scaling import Scaling

    cs = write_family(tmp_path / "c", n=2)
    out = tmp_path / "m.safetensors"
    merge_checkpoints(
        cs.pretrained,
        cs.finetuned,
        make_method("ties"),
        Scaling.lines(beta=0.5),
        out,
        progress=False,
        out_dtype="bfloat16",
    )
    got = safetensors.torch.load_file(str(out))
    assert set(got) == set(cs.base)
    assert all(v.dtype == torch.bfloat16 for v in got.values())


# ----------------------------------------------------------------------------------------------
# The sha256 cache


def test_hash_cache_hits_unchanged_files_and_misses_rewrites(tmp_path, monkeypatch) -> None:
    from lines.io import base as io_base
    from lines.io import hashcache

    monkeypatch.setenv("LINES_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []
    real = io_base.sha256_file
    monkeypatch.setattr(io_base, "sha256_file", lambda p: calls.append(p) or real(p))
    f = save_state_dict(tmp_path / "a.safetensors", {"w": torch.arange(6.0)})
    want = real(f)
    assert io_base.cached_sha256(f) == want and len(calls) == 1
    assert io_base.cached_sha256(f) == want and len(calls) == 1  # from the cache
    with open_checkpoint(f) as ck:
        assert ck.sha256() == want and len(calls) == 1
    save_state_dict(f, {"w": torch.arange(6.0) + 1})  # same size, new content
    assert io_base.cached_sha256(f) == real(f) != want and len(calls) == 2
    monkeypatch.setenv("LINES_HASH_CACHE", "0")
    assert hashcache.lookup(f) is None
    io_base.cached_sha256(f)
    assert len(calls) == 3
    monkeypatch.setenv("LINES_HASH_CACHE", "1")
    (tmp_path / "cache" / "sha256.json").write_text("not json")  # a broken cache is ignored
    assert io_base.cached_sha256(f) == real(f)
