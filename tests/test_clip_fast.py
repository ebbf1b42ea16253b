"""The fast CLIP evaluator (lines.clip.fast, issue 13): the same predictions as the standard
evaluator in fp32, agreement within rounding in bf16, weights written in place, resident and
streamed splits, whole-batch padding, option parsing; on CUDA, the compiled bf16 tower against
the autocast evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_clip import VISION
from PIL import Image

from lines.clip.evaluate import Preprocess, cached_split, evaluate
from lines.clip.fast import FastTower, compile_mode_for, fast_dtype, fast_eval_enabled
from lines.clip.heads import ZeroShotHead
from lines.clip.layouts import load_split
from lines.clip.tower import LeanVisionTransformer
from lines.errors import LinesError

CPU = torch.device("cpu")


@pytest.fixture
def mnist(tmp_path):
    """45 noise images in 3 MNIST classes, cached (uint8) at the tiny tower's size."""
    rng = np.random.default_rng(0)
    for c in ("0", "1", "2"):
        for j in range(15):
            p = tmp_path / "data" / "MNIST" / "test" / c / f"{j}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(p)
    split = load_split("MNIST", "test", tmp_path / "data")
    pre = Preprocess(image_size=VISION["image_size"])
    return split, pre, cached_split(split, pre, tmp_path / "cache")


def _tower(seed=0):
    """The tiny ViT with every parameter random (built without open_clip: the GPU host has
    none)."""
    m = LeanVisionTransformer(
        image_size=VISION["image_size"],
        patch_size=VISION["patch_size"],
        width=VISION["width"],
        layers=VISION["layers"],
        heads=VISION["heads"],
        mlp_ratio=VISION["mlp_ratio"],
        output_dim=48,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            ln = name.endswith("weight") and p.ndim == 1  # layer norms: around 1
            p.copy_(
                (1.0 if ln else 0.0) + (0.1 if ln else 0.05) * torch.randn(p.shape, generator=g)
            )
    return m.eval()


def _head():
    """MNIST's 10 rows, of which only the images' 3 labels can win (a bias rules out the
    others), so predictions are right a third of the time and move with the weights."""
    w = 100 * torch.randn(10, 48, generator=torch.Generator().manual_seed(0))
    return ZeroShotHead("MNIST", w, torch.tensor([0.0] * 3 + [-1e4] * 7))


def test_fp32_equals_the_standard_evaluator_with_padding_and_streaming(mnist, tmp_path):
    split, pre, cached = mnist
    enc, head = _tower(), _head()
    ref = evaluate(enc, head, split, cache_dir=tmp_path / "cache", preprocess=pre, batch_size=7)
    # batch 7 does not divide 45: the last batch is padded (and its padding ignored)
    resident = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=7)
    c = resident.correct("MNIST/test", cached, head)
    assert c.dtype == torch.bool and c.shape == (45,)
    assert int(c.sum()) == ref.correct
    assert resident.resident_bytes == 45 * 3 * 32 * 32  # the uint8 images, once
    streamed = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=7, budget_bytes=0)
    c2 = streamed.correct("MNIST/test", cached, head)
    assert streamed.resident_bytes == 0 and torch.equal(c, c2)
    # the predictions themselves: the fp32 tower's logits, argmax, against the labels
    x = pre.normalize(torch.from_numpy(np.array(cached.images)))
    with torch.no_grad():
        pred = head.logits(enc(x)).argmax(1)
    assert torch.equal(c, pred == torch.from_numpy(cached.labels))


def test_weights_are_written_in_place(mnist):
    split, pre, cached = mnist
    a, b, head = _tower(0), _tower(1), _head()
    fast = FastTower(a, pre, CPU, dtype=torch.float32, batch_size=16)
    ids = {k: w.data_ptr() for k, w in fast.weights.items()}
    first = fast.correct("k", cached, head)
    fast.load({f"visual.{k}": v for k, v in b.state_dict().items()}, prefix="visual.")
    assert {k: w.data_ptr() for k, w in fast.weights.items()} == ids  # same storage
    second = fast.correct("k", cached, head)
    other = FastTower(b, pre, CPU, dtype=torch.float32, batch_size=16).correct("k", cached, head)
    assert torch.equal(second, other) and not torch.equal(first, second)
    fast.sync_from(a)  # back to the first tower's weights
    assert torch.equal(fast.correct("k", cached, head), first)
    with pytest.raises(LinesError, match="lacks 1 tower tensor"):
        fast.load({k: v for k, v in a.state_dict().items() if k != "proj"})


def test_bf16_agrees_within_rounding(mnist):
    split, pre, cached = mnist
    enc, head = _tower(), _head()
    fp32 = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=16).correct("k", cached, head)
    bf16 = FastTower(enc, pre, CPU, dtype=torch.bfloat16, batch_size=16)
    assert all(w.dtype == torch.bfloat16 for w in bf16.weights.values())
    c = bf16.correct("k", cached, head)
    assert (c != fp32).sum() <= 3  # near-tied random predictions may flip


def test_options():
    cuda = torch.device("cuda")
    assert fast_eval_enabled("auto", CPU) is False and fast_eval_enabled("auto", cuda) is True
    assert fast_eval_enabled("true", CPU) is True and fast_eval_enabled("false", cuda) is False
    assert compile_mode_for("auto", CPU) == "off"
    assert compile_mode_for("auto", cuda) == "default"
    assert compile_mode_for("default", CPU) == "default"
    with pytest.raises(LinesError, match="compile must be"):
        compile_mode_for("reduce-overhead", CPU)  # CUDA graphs free earlier batches' outputs
    assert fast_dtype(CPU, "auto") == torch.float32 and fast_dtype(CPU, "bf16") == torch.bfloat16
    assert fast_dtype(CPU, "fp16") == torch.float16
    with pytest.raises(LinesError, match="fast_eval must be"):
        fast_eval_enabled("sometimes", CPU)
    with pytest.raises(LinesError, match="compile must be"):
        compile_mode_for("fastest", CPU)
    with pytest.raises(LinesError, match="precision must be"):
        fast_dtype(CPU, "int8")
    with pytest.raises(LinesError, match="batch_size must be positive"):
        FastTower(_tower(), Preprocess(image_size=32), CPU, batch_size=0)


def test_clip_bench_uses_the_fast_path_when_asked(tmp_path):
    """``Bench`` (what every CLIP stage evaluates with) with fast_eval true gives the standard
    path's accuracies in fp32 on the tiny benchmark."""
    import argparse

    from clip_bench_fixture import clip_params, make_bench

    from lines.clip import stages as S

    bench = make_bench(tmp_path / "b", ["MNIST", "EuroSAT"], fusion_bench=False)
    src = bench.tall_masks
    ckpt = tmp_path / "ckpt"
    S.run_prepare(
        src["pretrained"],
        src["text"],
        {k: src[k] for k in ("MNIST", "EuroSAT")},
        ckpt,
        model="tiny",
        hub_cache="",
        offline=True,
        timeout=1.0,
    )
    common = clip_params(bench)["common"]
    ns = argparse.Namespace(**{**common, "cache_dir": tmp_path / "cache"})
    res = {}
    for fast in ("false", "true"):
        ns.fast_eval = fast
        with S.Bench(ns, ckpt) as b:
            assert b.fast_eval is (fast == "true")
            assert b.compile_mode == "off"  # compile: auto is off on the CPU
            res[fast] = [
                b.accuracy(b.base, "test", ["MNIST", "EuroSAT"]),
                b.accuracy(b.finetuned_state(b.ck.for_task("MNIST")), "test", ["MNIST"]),
                b.accuracy(None, "test", ["EuroSAT"]),  # the weights loaded last
            ]
    assert res["true"] == res["false"]


@pytest.mark.gpu
def test_compiled_bf16_on_cuda_agrees_with_autocast(mnist, tmp_path):
    """On CUDA: the compiled bf16 tower gives (nearly) the autocast evaluator's predictions, and
    writing new weights into the compiled module changes its predictions without recompiling."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    split, pre, cached = mnist
    cuda = torch.device("cuda")
    enc, head = _tower(), _head()
    ref = evaluate(enc, head, split, cache_dir=tmp_path / "cache", preprocess=pre, device="cuda")
    fast = FastTower(enc, pre, cuda, batch_size=16, compile_mode="default")
    head.weight = head.weight.cuda()
    head.bias = head.bias.cuda()
    c = fast.correct("k", cached, head)
    eager32 = FastTower(enc, pre, cuda, dtype=torch.float32, batch_size=16).correct(
        "k", cached, head
    )
    assert abs(int(c.sum()) - ref.correct) <= 3
    assert (c != eager32).sum() <= 3  # per example: bf16 flips only near-tied predictions
    other = _tower(1)
    fast.sync_from(other.cuda())
    after = fast.correct("k", cached, head)
    assert fast.compile_mode == "default"  # compiled, not fallen back
    eager = FastTower(other, pre, cuda, batch_size=16).correct("k", cached, head)
    assert (after != eager).sum() <= 2 and not torch.equal(after, c)


def test_fast_eval_options_in_params_and_on_the_command_line():
    """A YAML boolean would reach the stage as a bare flag (or as nothing, for false): the
    parameters check asks for a quoted value; a bare ``--fast_eval`` means true."""
    from pathlib import Path

    import yaml

    from lines.clip.config import validate_clip_params
    from lines.clip.stages import build_parser

    shipped = yaml.safe_load((Path(__file__).parents[1] / "clip" / "params.yaml").read_text())
    assert shipped["common"]["fast_eval"] == "auto" and shipped["common"]["compile"] == "auto"

    def params(**common):
        return {**shipped, "common": {**shipped["common"], **common}}

    validate_clip_params(shipped, "clip/params.yaml")
    with pytest.raises(LinesError, match="common.fast_eval: .*write it quoted, 'false'"):
        validate_clip_params(params(fast_eval=False), "params.yaml")
    with pytest.raises(LinesError, match="common.compile"):
        validate_clip_params(params(compile="reduce-overhead"), "params.yaml")
    validate_clip_params(params(fast_eval="false", fast_eval_budget_gb=2.5), "params.yaml")
    p = build_parser()
    a = p.parse_args(["heads", "--fast_eval", "--out", "x"])
    assert a.fast_eval == "true" and a.fast_eval_budget_gb == 0.0
    assert p.parse_args(["heads", "--fast_eval", "false", "--out", "x"]).fast_eval == "false"


def test_several_splits_run_as_one_stream_of_whole_batches(mnist, tmp_path):
    """Resident splits laid end to end (batches spanning two splits, one padded tail) give each
    split its own correctness; a streamed split among them too."""
    split, pre, cached = mnist
    small = cached_split(split.subset(list(range(0, 45, 3)), "test"), pre, tmp_path / "c2")
    assert len(small) == 15
    enc, head = _tower(), _head()

    def alone(c):
        return FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=8).correct("x", c, head)

    a, b = alone(cached), alone(small)
    assert torch.equal(b, a[::3])  # the subset's images are every third of the split's
    fast = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=8)
    shapes = []
    inner = fast.forward
    fast.forward = lambda x: shapes.append(tuple(x.shape)) or inner(x)
    out = fast.correct_many([("a", cached, head, None), ("b", small, head, None)])
    assert [len(c) for c in out] == [45, 15]
    assert torch.equal(out[0], a) and torch.equal(out[1], b)
    assert len(shapes) == 8 and set(shapes) == {(8, 3, 32, 32)}  # ceil(60 / 8), one shape
    out = fast.correct_many([("b", small, head, None), ("a", cached, head, None)])
    assert torch.equal(out[0], b) and torch.equal(out[1], a)  # order follows the request
    mixed = FastTower(
        enc, pre, CPU, dtype=torch.float32, batch_size=8, budget_bytes=len(cached) * 3072
    )
    out = mixed.correct_many([("a", cached, head, None), ("b", small, head, None)])
    assert mixed._splits["a"][0] is not None and mixed._splits["b"][0] is None  # b streamed
    assert torch.equal(out[0], a) and torch.equal(out[1], b)
    mixed.release()
    assert mixed.resident_bytes == 0 and not mixed._splits


def test_a_failing_compiler_falls_back_to_eager(mnist, monkeypatch):
    """No usable compiler (simulated): one warning, then the eager tower's exact results."""
    split, pre, cached = mnist
    enc, head = _tower(), _head()

    def broken(module, **kw):
        def fail(x):
            raise RuntimeError("no C compiler found\nmore detail")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    fast = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=16, compile_mode="default")
    with pytest.warns(UserWarning, match=r"torch.compile \(default\) failed.*no C compiler found$"):
        c = fast.correct("k", cached, head)
    assert fast.compile_mode == "off (compile failed)" and fast.forward is fast.module
    eager = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=16).correct("k", cached, head)
    assert torch.equal(c, eager)


def test_head_columns_are_projected_as_the_standard_evaluator_does(mnist):
    """Splits whose classes are subsets or groups of the head's (ImageNet-R/A, ObjectNet): each
    class's logit is the max over its columns, on the fast path too."""
    from lines.clip.evaluate import _project

    split, pre, cached = mnist
    enc, head = _tower(), _head()
    x = pre.normalize(torch.from_numpy(np.array(cached.images)))
    with torch.no_grad():
        logits = head.logits(enc(x))
    labels = torch.from_numpy(cached.labels)
    fast = FastTower(enc, pre, CPU, dtype=torch.float32, batch_size=16)
    for cols in ([[2], [0], [1]], [[0, 5], [1], [2, 9]]):
        want = _project(logits, cols).argmax(1) == labels
        assert torch.equal(fast.correct("k", cached, head, cols), want)
    assert not torch.equal(
        fast.correct("k", cached, head, [[2], [0], [1]]), fast.correct("k", cached, head)
    )
