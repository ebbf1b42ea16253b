"""The performance machinery changes no result.

- TIES's global threshold: the one-pass radix select (sample → bracket → kept boundary bucket)
  and its fallback (a bracket that misses) both give ``kthvalue`` of the whole vector, through the
  engine with slicing and read-ahead on, on values full of ties; the merged task vector equals a
  direct port of the reference's flatten-and-stack TIES.
- Read-ahead: the stream returns the same tensors whatever the depth and number of readers, a
  mispredicted request (a fix-up re-read) is served correctly, and NaN/Inf are still refused
  (once per input and slice) with the file and key named and nothing written.
- Task arithmetic with automatic α takes the one-pass route and gives the two-phase result.
- The writer's running sha256 equals the file's, and is dropped after an in-place rewrite.
- ``gpu``: merges on CUDA equal the CPU's within float tolerance (same masks for TIES).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lines.engine.stream as engine_stream
from lines.engine import apply_task_vector, merge_checkpoints
from lines.errors import LinesError
from lines.io import SafetensorsWriter, TensorInfo, load_state_dict, save_state_dict, sha256_file
from lines.merging.base import MultiRadixSelect, global_k
from lines.merging.methods.task_arithmetic import TaskArithmetic
from lines.merging.methods.ties import Ties
from lines.readahead import ReadAhead
from lines.scaling import Scaling

# open_clip-like layout: 4 blocks, entries outside the blocks on both sides
SHAPES = {
    "visual.class_embedding": (64,),
    "visual.conv1.weight": (64, 3, 4, 4),
    **{f"visual.transformer.resblocks.{i}.attn.in_proj_weight": (192, 64) for i in range(4)},
    **{f"visual.transformer.resblocks.{i}.ln_1.bias": (64,) for i in range(4)},
    "visual.ln_post.weight": (64,),
    "visual.proj": (64, 32),
}
QUIET = {"progress": False, "hash_inputs": False, "overwrite": True}


def _tied(g: torch.Generator, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    """Values on a coarse grid (many exact ties in |τ|, exact zero sums) plus some continuous."""
    v = torch.randint(-6, 7, shape, generator=g).float() * scale
    noise = torch.randn(shape, generator=g) * scale * (torch.rand(shape, generator=g) < 0.3)
    return torch.where(noise != 0, noise, v)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    d = tmp_path_factory.mktemp("perf")
    g = torch.Generator().manual_seed(7)
    theta0 = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    theta0["visual.position_ids"] = torch.arange(8)  # an integer buffer passes through
    base = save_state_dict(d / "theta0.safetensors", theta0)
    fts = []
    for i in range(5):
        sd = {
            k: (v + _tied(g, v.shape, 0.01 * (1 + j % 3)) if v.is_floating_point() else v)
            for j, (k, v) in enumerate(theta0.items())
        }
        fts.append(save_state_dict(d / f"ft{i}.safetensors", sd))
    return base, fts


def _flat_taus(base: Path, fts: list[Path]) -> tuple[list[str], torch.Tensor]:
    b = load_state_dict(base)
    keys = [k for k in b if b[k].is_floating_point()]
    rows = []
    for f in fts:
        sd = load_state_dict(f)
        rows.append(torch.cat([(sd[k] - b[k]).reshape(-1) for k in keys]))
    return keys, torch.stack(rows)


def _reference_ties(flat: torch.Tensor, density: float) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = flat.shape
    kth = flat.abs().kthvalue(d - int(d * density), dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * keep
    return sel.sum(0) / (sel != 0).sum(0).float().clamp(min=1), kth.view(-1)


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of a few thousand entries per input, so every tensor is fed in several pieces and
    the read-ahead has many units in flight."""
    monkeypatch.setattr(engine_stream, "WORKING_SET_BYTES", 6 * 4 * 2048)
    monkeypatch.setattr(engine_stream, "MIN_SLICE", 1000)


@pytest.mark.parametrize("bracket", ["hit", "miss"])
def test_streaming_ties_equals_flatten_and_stack(
    ckpts, tmp_path, small_slices, monkeypatch, bracket
):
    base, fts = ckpts
    seen: list[MultiRadixSelect] = []
    orig = MultiRadixSelect._bracket

    def spy(self: MultiRadixSelect) -> None:
        orig(self)
        seen.append(self)
        if bracket == "miss" and self._band is not None:  # a bracket far below the k-th value
            lo, hi = self._band
            self._band = (torch.zeros_like(lo), torch.zeros_like(hi))

    monkeypatch.setattr(MultiRadixSelect, "_bracket", spy)
    density = 0.3
    m = Ties(density=density)
    tv = tmp_path / "tau.safetensors"
    merge_checkpoints(
        base,
        fts,
        m,
        Scaling.lines(beta=0.5),
        tmp_path / "o.safetensors",
        save_task_vector=tv,
        **QUIET,
    )
    keys, flat = _flat_taus(base, fts)
    want, kth = _reference_ties(flat, density)
    assert len(seen) == 1
    assert seen[0].one_pass is (bracket == "hit")
    assert m.thresholds() == kth.tolist()
    tau = load_state_dict(tv)
    got = torch.cat([tau[k].reshape(-1) for k in keys])
    assert torch.equal(got != 0, want != 0)  # the same kept / elected entries
    assert torch.allclose(got, want, rtol=0, atol=1e-6)


def test_multi_radix_select_rows_equal_kthvalue():
    g = torch.Generator().manual_seed(3)
    blocks = [_tied(g, (4, s), 1.0).abs() for s in (5000, 1, 300, 7000)]
    whole = torch.cat(blocks, dim=1)
    total = whole.shape[1]
    for density in (0.01, 0.2, 0.9):
        k = global_k(total, density)
        for with_sample in (False, True):
            sel = MultiRadixSelect(4, total, k)
            if with_sample:
                for b in blocks:
                    sel.observe(-1, b)
                sel.end_pass(-1)
            for p in range(2):
                if sel.needs_pass(p):
                    for b in blocks:
                        sel.observe(p, b)
                    sel.end_pass(p)
            assert sel.one_pass is with_sample
            assert sel.values == whole.kthvalue(k, dim=1).values.tolist()


def test_read_ahead_depths_and_misprediction(ckpts):
    from lines.io import open_checkpoint

    base, fts = ckpts
    cks = [open_checkpoint(p) for p in [base, *fts]]
    keys = [k for k in cks[0].keys() if cks[0].info(k).dtype.is_floating_point]
    order = [(k, None) for k in keys] + [(keys[1], (0, 50)), (keys[1], (50, 100))]
    want = {
        u: [ck.get(u[0]) if u[1] is None else ck.get_flat(u[0], *u[1]) for ck in cks] for u in order
    }
    for depth, workers in ((0, 1), (1, 1), (3, 2), (8, 4)):
        with ReadAhead(cks, order, torch.device("cpu"), depth=depth, workers=workers) as ra:
            # in order, then out of order (a fix-up re-reads an early unit), then in order again
            for u in order + [order[0], order[5]] + order:
                got = ra.get(u)
                assert all(torch.equal(a, b) for a, b in zip(got, want[u], strict=True)), u
    for ck in cks:
        ck.close()


def test_nan_refused_through_read_ahead(ckpts, tmp_path, small_slices):
    base, fts = ckpts
    sd = load_state_dict(fts[2])
    key = "visual.transformer.resblocks.2.attn.in_proj_weight"
    sd[key][100, 3] = float("nan")
    bad = save_state_dict(tmp_path / "bad.safetensors", sd)
    out = tmp_path / "never.safetensors"
    for method in (Ties(density=0.2), TaskArithmetic()):
        with pytest.raises(LinesError, match=rf"bad\.safetensors: NaN in tensor '{key}'"):
            merge_checkpoints(base, [fts[0], bad], method, Scaling.lines(beta=0.5), out, **QUIET)
        assert not out.exists()
    sd[key][100, 3] = float("inf")
    bad = save_state_dict(tmp_path / "bad.safetensors", sd)
    with pytest.raises(LinesError, match="Inf in tensor"):
        merge_checkpoints(base, [fts[0], bad], TaskArithmetic(), Scaling.uniform(1.0), out, **QUIET)


def test_huge_finite_values_are_not_refused(tmp_path):
    """The NaN/Inf check sums in float32: a sum that overflows is not a bad value."""
    big = {
        "visual.proj": torch.full((64, 32), 3e38),
        "visual.transformer.resblocks.0.ln_1.bias": torch.ones(64),
    }
    b = save_state_dict(tmp_path / "b.safetensors", big)
    f = save_state_dict(tmp_path / "f.safetensors", {k: v.clone() for k, v in big.items()})
    merge_checkpoints(
        b,
        [f, f],
        TaskArithmetic(),
        Scaling.uniform(1.0),
        tmp_path / "o.safetensors",
        allow_duplicate_inputs=True,
        **QUIET,
    )


def test_task_arithmetic_auto_alpha_one_pass_equals_two_phase(ckpts, tmp_path, small_slices):
    base, fts = ckpts
    one = merge_checkpoints(
        base, fts, TaskArithmetic(), Scaling.lines(beta=0.7), tmp_path / "one.safetensors", **QUIET
    )
    # save_task_vector forces the two-phase route (τ file, then θ_0 + λτ)
    two = merge_checkpoints(
        base,
        fts,
        TaskArithmetic(),
        Scaling.lines(beta=0.7),
        tmp_path / "two.safetensors",
        save_task_vector=tmp_path / "tau.safetensors",
        **QUIET,
    )
    assert one["scaling"]["alpha_value"] == two["scaling"]["alpha_value"] == 1 / len(fts)
    assert one["norms"]["task_vector_sum"] == one["norms"]["merged_task_vector"]
    assert one["norms"]["task_vector_sum"] == pytest.approx(
        two["norms"]["task_vector_sum"], rel=1e-12
    )
    a, b = (
        load_state_dict(tmp_path / "one.safetensors"),
        load_state_dict(tmp_path / "two.safetensors"),
    )
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_writer_running_sha256(tmp_path):
    sd = {f"t{i}": torch.randn(1000 + 37 * i) for i in range(12)}
    specs = [(k, TensorInfo(tuple(v.shape), v.dtype)) for k, v in sd.items()]
    p = tmp_path / "w.safetensors"
    w = SafetensorsWriter(p, specs, {"m": "1"})
    for k, v in sd.items():
        w.write(k, v)
    w.commit()
    assert w.sha256() == sha256_file(p)
    w = SafetensorsWriter(p, specs, {"m": "1"})
    for k, v in sd.items():
        w.write(k, v)
    w.rewrite("t3", sd["t3"] * 2)
    w.commit()
    assert w.sha256() is None
    assert torch.equal(load_state_dict(p)["t3"], sd["t3"] * 2)


def test_manifest_output_hash_matches_file(ckpts, tmp_path):
    base, fts = ckpts
    for scaling in (Scaling.uniform(0.5), Scaling.lines(beta=0.5)):
        out = tmp_path / "h.safetensors"
        m = merge_checkpoints(
            base, fts[:3], Ties(density=0.5), scaling, out, progress=False, overwrite=True
        )
        assert m["output"]["sha256"] == sha256_file(out)
        assert m["inputs"]["pretrained"]["sha256"] == sha256_file(base)
        assert [f["sha256"] for f in m["inputs"]["finetuned"]] == [sha256_file(f) for f in fts[:3]]


@pytest.fixture(scope="module")
def grid_ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Values on binary grids (θ_0 multiples of 2^-6, τ multiples of 2^-7 in [-6, 6]·2^-7, a
    third of them zero): every sum, difference and LiNeS product is exact in float32 in any
    order, so CPU and GPU must agree bit for bit, exact zero sums (sign-election ties) included."""
    d = tmp_path_factory.mktemp("grid")
    g = torch.Generator().manual_seed(11)
    theta0 = {k: torch.randint(-64, 64, s, generator=g) / 64.0 for k, s in SHAPES.items()}
    base = save_state_dict(d / "theta0.safetensors", theta0)
    fts = []
    for i in range(5):
        sd = {}
        for k, v in theta0.items():
            tau = torch.randint(-6, 7, v.shape, generator=g) / 128.0
            tau = tau * (torch.rand(v.shape, generator=g) > 0.3)
            sd[k] = v + tau
        fts.append(save_state_dict(d / f"ft{i}.safetensors", sd))
    return base, fts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["ta", "ties"])
def test_gpu_merge_equals_cpu(grid_ckpts, tmp_path, small_slices, method):
    base, fts = grid_ckpts
    outs = {}
    for dev in ("cpu", "cuda"):
        m = Ties(density=0.2) if method == "ties" else TaskArithmetic()
        out = tmp_path / f"{dev}.safetensors"
        tv = tmp_path / f"{dev}.tau.safetensors"
        man = merge_checkpoints(
            base, fts, m, Scaling.lines(beta=0.5), out, device=dev, save_task_vector=tv, **QUIET
        )
        assert man["device"].startswith(dev)
        # the β-sweep path on the same device
        apply_task_vector(
            base,
            tv,
            Scaling.lines(beta=1.25),
            tmp_path / f"{dev}.b.safetensors",
            device=dev,
            **QUIET,
        )
        outs[dev] = (
            load_state_dict(out),
            man,
            m,
            load_state_dict(tmp_path / f"{dev}.b.safetensors"),
        )
    (a, ma, ta, sa), (b, mb, tb, sb) = outs["cpu"], outs["cuda"]
    assert ma["scaling"]["alpha_value"] == mb["scaling"]["alpha_value"]
    assert ma["norms"] == mb["norms"]
    if method == "ties":
        assert ta.thresholds() == tb.thresholds()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(sa[k], sb[k]), k


def _merge_both_ways(base, fts, tmp_path, monkeypatch, device: str) -> list[dict]:
    """The same TIES + LiNeS merge read ahead from disk and with every input resident."""
    outs = []
    for resident in (False, True):
        out = tmp_path / f"{device}-{resident}.safetensors"
        merge_checkpoints(
            base,
            fts,
            Ties(density=0.2),
            Scaling.lines(beta=0.5),
            out,
            device=device,
            resident=resident,
            **QUIET,
        )
        outs.append(load_state_dict(out))
    return outs


def test_resident_inputs_equal_streamed(ckpts, tmp_path, small_slices, monkeypatch):
    """The resident reader (all inputs held in memory) gives the same bytes as the read-ahead;
    on the CPU (where the caller's resident=True is obeyed) it tests its bookkeeping."""
    a, b = _merge_both_ways(*ckpts, tmp_path, monkeypatch, "cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resident_inputs_equal_streamed_on_gpu(ckpts, tmp_path, small_slices, monkeypatch):
    a, b = _merge_both_ways(*ckpts, tmp_path, monkeypatch, "cuda")
    assert all(torch.equal(a[k], b[k]) for k in a)
