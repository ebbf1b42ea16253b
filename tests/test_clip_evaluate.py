"""The evaluation engine on generated image folders: known accuracies, the preprocessed-tensor
cache, and exactness against open_clip's own preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_clip import TEXT, VISION, openclip_state_dict, tiny_openclip
from PIL import Image
from torch import nn

import lines.clip.splits as D
from lines.clip.datasets import get_task
from lines.clip.evaluate import (
    OPENAI_MEAN,
    OPENAI_STD,
    Preprocess,
    _project,
    cached_split,
    evaluate,
    evaluate_checkpoint,
    reference_accuracies,
    summarize,
)
from lines.clip.heads import ZeroShotHead
from lines.clip.layouts import load_split
from lines.clip.model import build_image_encoder
from lines.errors import LinesError

PRE = Preprocess(image_size=16)
STEP = 20  # red channel = STEP * class the controlled model predicts


class RedDecoder(nn.Module):
    """Predicts class round(red / STEP) of a solid-colour image: a model we control."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.image_size = PRE.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0].mean(dim=(1, 2)) * OPENAI_STD[0] + OPENAI_MEAN[0]) * 255
        cls = torch.round(red / STEP).long().clamp(0, self.num_classes - 1)
        return nn.functional.one_hot(cls, self.num_classes).float()


def _solid(path, pred, shade=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), (STEP * pred, 60 + shade, 90)).save(path)


@pytest.fixture
def eurosat(tmp_path):
    """EuroSAT test folders named by class: river (label 8) and forest (label 1).
    river: 3 images predicted 8 (right), 1 predicted 1 (wrong);
    forest: 2 predicted 1 (right), 1 predicted 3 (wrong).  Accuracy 5/7."""
    root = tmp_path / "data"
    t = root / "EuroSAT" / "test"
    for j, pred in enumerate([8, 8, 8, 1]):
        _solid(t / "river" / f"r{j}.png", pred, j)
    for j, pred in enumerate([1, 1, 3]):
        _solid(t / "forest" / f"f{j}.png", pred, j)
    return root


def _head(n=10):
    return ZeroShotHead("EuroSAT", torch.eye(n) * 100.0)


def test_accuracy_is_the_hand_computed_value(eurosat):
    split = load_split("EuroSAT", "test", eurosat)
    r = evaluate(RedDecoder(10), _head(), split, preprocess=PRE, batch_size=3)
    assert (r.correct, r.total) == (5, 7)
    assert r.top1 == pytest.approx(5 / 7)
    r = evaluate(RedDecoder(10), _head(), split, preprocess=PRE, reference_top1=0.8)
    assert r.normalized_top1 == pytest.approx((5 / 7) / 0.8)


def test_cache_is_used_the_second_time(eurosat, tmp_path, monkeypatch):
    decodes = {"n": 0}
    real = D.open_image

    def counting(path):
        decodes["n"] += 1
        return real(path)

    monkeypatch.setattr(D, "open_image", counting)
    split = load_split("EuroSAT", "test", eurosat)
    cache = tmp_path / "cache"
    first = evaluate(RedDecoder(10), _head(), split, preprocess=PRE, cache_dir=cache)
    assert decodes["n"] == 7
    decodes["n"] = 0
    again = load_split("EuroSAT", "test", eurosat)
    second = evaluate(RedDecoder(10), _head(), again, preprocess=PRE, cache_dir=cache, batch_size=2)
    assert decodes["n"] == 0
    assert (first.correct, first.total) == (second.correct, second.total) == (5, 7)
    assert second.extra["cache"] == first.extra["cache"]
    # No cache: decodes again, same result.
    third = evaluate(RedDecoder(10), _head(), again, preprocess=PRE)
    assert decodes["n"] == 7 and third.correct == 5
    # Another preprocessing (image size) is another cache entry.
    cached_split(again, Preprocess(image_size=8), cache)
    assert len(list((cache / "images" / "EuroSAT").iterdir())) == 2


def test_cache_invalidated_when_files_change(eurosat, tmp_path):
    cache = tmp_path / "cache"
    a = cached_split(load_split("EuroSAT", "test", eurosat), PRE, cache)
    _solid(eurosat / "EuroSAT/test/river/r9.png", 8)
    b = cached_split(load_split("EuroSAT", "test", eurosat), PRE, cache)
    assert a.path != b.path and len(b) == 8


def test_cpu_equal_with_and_without_cache_and_to_open_clip(tmp_path):
    """A real (tiny) open_clip image tower on noise images: the cached path gives bit-identical
    inputs, hence identical embeddings, to open_clip's own preprocessing."""
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    t = tmp_path / "data" / "MNIST" / "test"
    for c in range(3):
        for j in range(2):
            p = t / str(c) / f"{j}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 255, (37 + j, 41, 3), dtype=np.uint8)
            Image.fromarray(arr).save(p)
    split = load_split("MNIST", "test", tmp_path / "data")
    model = tiny_openclip(0)
    enc = build_image_encoder(openclip_state_dict(0), heads=VISION["heads"])
    pre = Preprocess(image_size=VISION["image_size"])

    cached = cached_split(split, pre, tmp_path / "cache")
    x_cached = pre.normalize(torch.from_numpy(np.array(cached.images)))
    ref_tf = image_transform(VISION["image_size"], is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    x_ref = torch.stack([ref_tf(Image.open(f)) for f in split.files])
    assert torch.equal(x_cached, x_ref)
    with torch.no_grad():
        torch.testing.assert_close(enc(x_cached), model.encode_image(x_ref), rtol=0, atol=0)

    head = ZeroShotHead("MNIST", torch.randn(10, 48))
    with_cache = evaluate(enc, head, split, cache_dir=tmp_path / "cache")
    without = evaluate(enc, head, split)
    assert (with_cache.correct, with_cache.total) == (without.correct, without.total)
    assert with_cache.extra["precision"] == "torch.float32"


def test_validation_split_has_its_own_cache(tmp_path):
    root = tmp_path / "data"
    for c in ("forest", "river"):
        for j in range(10):
            _solid(root / "EuroSAT" / "train" / c / f"{j}.png", 1 if c == "forest" else 8, j)
    val = load_split("EuroSAT", "val", root)
    assert len(val) == 2
    r = evaluate(RedDecoder(10), _head(), val, preprocess=PRE, cache_dir=tmp_path / "c")
    assert r.total == 2 and r.correct == 2 and r.split == "val"
    names = [p.name for p in (tmp_path / "c" / "images" / "EuroSAT").iterdir()]
    assert len(names) == 1 and names[0].startswith("val-")


def test_head_size_checked(eurosat):
    split = load_split("EuroSAT", "test", eurosat)
    with pytest.raises(LinesError, match="has 5 classes"):
        evaluate(RedDecoder(5), ZeroShotHead("X", torch.eye(5)), split, preprocess=PRE)


def test_logit_projection_for_subsets_and_groups():
    logits = torch.tensor([[0.0, 5.0, 1.0, 7.0], [3.0, 0.0, 2.0, 1.0]])
    assert torch.equal(_project(logits, ((1,), (2,))), logits[:, [1, 2]])
    got = _project(logits, ((0, 3), (1, 2)))
    assert torch.equal(got, torch.tensor([[7.0, 5.0], [3.0, 2.0]]))
    assert get_task("ImageNetR").logit_subset[:2] == (1, 2)


def test_reference_accuracies_tall_masks_format(tmp_path):
    p = tmp_path / "nonlinear_ft_accuracies.json"
    p.write_text(json.dumps({"MNIST": 0.9969, "MNISTVal": 0.9956, "SUN397": 0.75, "Foo": 1}))
    assert reference_accuracies(p) == {"MNIST": 0.9969, "SUN397": 0.75}
    assert reference_accuracies(p, "val") == {"MNIST": 0.9956}
    assert reference_accuracies({"Cars:top1": 0.5}) == {"Cars": 0.5}


def test_summary_averages():
    from lines.clip.evaluate import EvalResult

    rs = [EvalResult("A", "test", 1, 2, 0.5, 0.625), EvalResult("B", "test", 3, 4, 0.75, 0.75)]
    s = summarize(rs)
    assert s["avg_top1"] == pytest.approx(0.625)
    assert s["avg_normalized_top1"] == pytest.approx(0.6875)


def test_evaluate_checkpoint_end_to_end(tmp_path):
    """Prepared files in, a summary out: the path a pipeline step takes."""
    from lines.clip.sources import prepare_checkpoint

    full = {f"model.{k}": v for k, v in openclip_state_dict(0).items()}
    src = tmp_path / "zeroshot.pt"
    torch.save(full, src)
    visual = tmp_path / "visual.safetensors"
    text = tmp_path / "full.safetensors"
    prepare_checkpoint(src, visual, tmp_path / "hub")
    prepare_checkpoint(src, text, tmp_path / "hub", towers="full")
    rng = np.random.default_rng(1)
    for task, classes in (("MNIST", ["0", "1"]), ("EuroSAT", ["forest", "river"])):
        for c in classes:
            for j in range(2):
                p = tmp_path / "data" / task / "test" / c / f"{j}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
    kw = dict(
        text_checkpoint=text,
        data_root=tmp_path / "data",
        cache_dir=tmp_path / "cache",
        reference={"MNIST": 0.5, "EuroSAT": 0.5},
        heads=VISION["heads"],
        text_heads=TEXT["heads"],
        device="cpu",
    )
    out = evaluate_checkpoint(visual, ["MNIST", "EuroSAT"], **kw)
    assert [r["task"] for r in out["results"]] == ["MNIST", "EuroSAT"]
    assert all(r["total"] == 4 for r in out["results"])
    assert "avg_normalized_top1" in out
    again = evaluate_checkpoint(visual, ["MNIST", "EuroSAT"], **kw)
    assert again["tasks"] == out["tasks"]
    assert len(list((tmp_path / "cache" / "heads").iterdir())) == 2


@pytest.mark.gpu
def test_gpu_autocast_agrees_with_cpu(tmp_path):
    """On CUDA the encoder runs under bf16 autocast; predictions of a tiny random model on noise
    images stay (nearly) those of the fp32 CPU run, and fp32 on CUDA matches CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(0)
    for c in ("0", "1", "2"):
        for j in range(40):
            p = tmp_path / "data" / "MNIST" / "test" / c / f"{j}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(p)
    split = load_split("MNIST", "test", tmp_path / "data")
    enc = build_image_encoder(openclip_state_dict(0), heads=VISION["heads"])
    head = ZeroShotHead("MNIST", torch.randn(10, 48, generator=torch.Generator().manual_seed(0)))
    kw = dict(cache_dir=tmp_path / "cache", batch_size=32)
    cpu = evaluate(enc, head, split, device="cpu", **kw)
    fp32 = evaluate(enc, head, split, device="cuda", precision="fp32", **kw)
    bf16 = evaluate(enc, head, split, device="cuda", **kw)
    assert (
        bf16.extra["precision"] == "torch.bfloat16" and fp32.extra["precision"] == "torch.float32"
    )
    assert abs(fp32.correct - cpu.correct) <= 1
    assert abs(bf16.correct - cpu.correct) <= 6  # 5% of 120 near-tied random predictions
