"""Checkpoint references, offline behaviour, and the community layouts, each written in its exact
format from tiny random models."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
import torch
from fixtures_clip import VISION, hf_vision_config, openclip_state_dict

from lines.clip.convert import openclip_to_hf
from lines.clip.model import build_image_encoder
from lines.clip.pickled import convert_pickled_module
from lines.clip.sources import (
    fetch,
    load_canonical,
    module_classes,
    parse_source,
    prepare_checkpoint,
    read_state_dict,
)
from lines.errors import LinesError
from lines.families import partition_keys
from lines.io import load_state_dict

TALL_MASKS_FILE = "single_task/ViT-B-32/MNISTVal/nonlinear_finetuned.pt"


def _visual(sd):
    return {k: v for k, v in sd.items() if k.startswith("visual.")}


def _equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------
# References


def test_parse_references():
    r = parse_source(f"hf:nik-dim/tall_masks@abc123/{TALL_MASKS_FILE}")
    assert (r.kind, r.repo, r.revision, r.file) == (
        "hf",
        "nik-dim/tall_masks",
        "abc123",
        TALL_MASKS_FILE,
    )
    r = parse_source("hf:tanganke/clip-vit-base-patch32_sun397")
    assert (r.repo, r.revision, r.file) == ("tanganke/clip-vit-base-patch32_sun397", None, None)
    r = parse_source("openclip:ViT-B-32:openai")
    assert (r.kind, r.model, r.tag) == ("openclip", "ViT-B-32", "openai")
    r = parse_source("path:/data/x.pt")
    assert r.kind == "path" and str(r.path) == "/data/x.pt"
    assert parse_source("relative/x.safetensors").kind == "path"
    for bad in ("openclip:ViT-B-32", "hf:justone", "hf:a/b@"):
        with pytest.raises(LinesError, match="bad reference"):
            parse_source(bad)


def test_offline_hf_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(LinesError) as e:
        fetch(f"hf:nik-dim/tall_masks@main/{TALL_MASKS_FILE}", tmp_path / "cache")
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg
    assert "offline" in msg and str(tmp_path / "cache") in msg
    assert f"hf download nik-dim/tall_masks {TALL_MASKS_FILE} --revision main" in msg


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(LinesError, match="unreachable within 2 s"):
        fetch("hf:tanganke/clip-vit-base-patch32_sun397@main", tmp_path, offline=False, timeout=2)
    assert time.monotonic() - t0 < 5


def test_offline_openclip_names_the_hub_file(tmp_path):
    with pytest.raises(LinesError) as e:
        fetch("openclip:ViT-B-32:openai", tmp_path, offline=True)
    msg = str(e.value)
    assert "timm/vit_base_patch32_clip_224.openai" in msg and "open_clip_model.safetensors" in msg
    with pytest.raises(LinesError, match="known tags for ViT-B-32"):
        fetch("openclip:ViT-B-32:nonsense", tmp_path, offline=True)


def _fake_hub_cache(cache, repo, files: dict[str, bytes], revision="main"):
    """The Hugging Face cache layout, as `hf download --cache-dir` leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / revision).write_text(commit)
    for name, data in files.items():
        p = root / "snapshots" / commit / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return commit


def test_cached_file_is_used_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    buf = tmp_path / "src.pt"
    _tall_masks_file(buf)
    commit = _fake_hub_cache(
        tmp_path / "cache", "nik-dim/tall_masks", {TALL_MASKS_FILE: buf.read_bytes()}
    )
    got = fetch(f"hf:nik-dim/tall_masks@main/{TALL_MASKS_FILE}", tmp_path / "cache")
    assert got.commit == commit and got.path.name == "nonlinear_finetuned.pt"


# ----------------------------------------------------------------------------------------------
# Layouts


def _tall_masks_file(path, seed=0):
    """What task_vectors' ImageEncoder.state_dict() saves: 'model.' prefix, the text transformer
    deleted, its token_embedding, positional_embedding, ln_final, text_projection and logit_scale
    left over."""
    full = openclip_state_dict(seed)
    torch.save({f"model.{k}": v for k, v in full.items() if not k.startswith("transformer.")}, path)
    return full


def test_tall_masks_layout(tmp_path):
    """torch.save of an open_clip CLIP state dict with 'model.' prefix and text leftovers."""
    src = tmp_path / "nonlinear_finetuned.pt"
    full = _tall_masks_file(src)
    out = tmp_path / "ft.safetensors"
    man = prepare_checkpoint(src, out, tmp_path / "cache")
    assert man["layout"] == "openclip-prefixed"
    assert "logit_scale" in man["dropped"] and "token_embedding.weight" in man["dropped"]
    assert json.loads(out.with_suffix(".json").read_text())["source"]["sha256"]
    got = load_state_dict(out)
    _equal(got, _visual(full))
    # lines.engine's family detection partitions it into the ViT's blocks.
    part = partition_keys(list(got))
    assert part.family == "openclip-vit" and part.num_blocks == VISION["layers"]
    # Its text transformer is gone: heads need the original weights, and the error says so.
    with pytest.raises(LinesError, match="openclip:ViT-B-32:openai"):
        prepare_checkpoint(src, tmp_path / "full.safetensors", tmp_path / "cache", towers="full")
    # A whole open_clip CLIP (as open_clip_model.safetensors) gives the full model.
    whole = tmp_path / "whole.pt"
    torch.save(full, whole)
    full_out = tmp_path / "full.safetensors"
    prepare_checkpoint(whole, full_out, tmp_path / "cache", towers="full")
    _equal(load_state_dict(full_out), full)


def test_open_clip_safetensors_layout(tmp_path):
    from lines.io import save_state_dict

    full = openclip_state_dict(0)
    src = tmp_path / "open_clip_model.safetensors"
    save_state_dict(src, full)
    prepared, _ = load_canonical(src, tmp_path)
    _equal(prepared.state_dict, _visual(full))


@pytest.mark.parametrize("legacy_prefix", [True, False])
def test_fusion_bench_layout(tmp_path, legacy_prefix):
    """A Hugging Face CLIPVisionModel folder without visual_projection: the projection comes from
    the pretrained model, so the image encoder equals the original."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    pre_file = tmp_path / "pretrained.pt"
    pre = _tall_masks_file(pre_file, 0)
    ft = openclip_state_dict(1)

    folder = tmp_path / "clip-vit-tiny_sun397"
    if legacy_prefix:  # the hub files, saved by transformers 4: vision_model.* keys
        folder.mkdir()
        hf = openclip_to_hf(ft, "vision", vision_prefix="vision_model.")
        save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
        hf_vision_config().save_pretrained(folder)
    else:  # what transformers 5's save_pretrained writes
        m = CLIPVisionModel(hf_vision_config())
        m.load_state_dict(openclip_to_hf(ft, "vision", vision_prefix=""), strict=True)
        m.save_pretrained(folder)

    with pytest.raises(LinesError, match="projection_from"):
        load_canonical(folder, tmp_path)
    prepared, _ = load_canonical(folder, tmp_path, projection_from=pre_file)
    expected = {**_visual(ft), "visual.proj": pre["visual.proj"]}
    _equal(prepared.state_dict, expected)
    assert prepared.report["filled"] == ["visual.proj"]
    enc = build_image_encoder(prepared.state_dict, heads=VISION["heads"])
    assert enc.lines_spec.image_size == VISION["image_size"]


def test_hf_clip_model_layout_full(tmp_path):
    from safetensors.torch import save_file

    full = openclip_state_dict(2)
    folder = tmp_path / "clip-vit-tiny"
    folder.mkdir()
    hf = openclip_to_hf(full, "clip")
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"))
    prepared, _ = load_canonical(folder, tmp_path, towers="full")
    _equal(prepared.state_dict, full)


# ----------------------------------------------------------------------------------------------
# Pickled whole modules (task_vectors)


@pytest.fixture
def pickled_image_encoder(tmp_path):
    """A task_vectors-style checkpoint: torch.save of a whole ImageEncoder from a module 'src.modeling'
    that no longer exists when the file is read (the usual 'No module named src' situation)."""
    from fixtures_clip import tiny_openclip

    pkg, mod = types.ModuleType("src"), types.ModuleType("src.modeling")

    class ImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tiny_openclip(3)
            delattr(self.model, "transformer")  # task_vectors drops the text transformer
            self.cache_dir = None

    ImageEncoder.__module__ = "src.modeling"
    ImageEncoder.__qualname__ = "ImageEncoder"
    mod.ImageEncoder = ImageEncoder
    pkg.modeling = mod
    sys.modules["src"], sys.modules["src.modeling"] = pkg, mod
    try:
        enc = ImageEncoder()
        path = tmp_path / "finetuned.pt"
        torch.save(enc, path)
        expected = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    finally:
        del sys.modules["src"], sys.modules["src.modeling"]
    return path, expected


def test_pickled_module_is_refused_by_default(pickled_image_encoder, tmp_path):
    path, _ = pickled_image_encoder
    assert "src.modeling.ImageEncoder" in module_classes(path)
    with pytest.raises(
        LinesError,
        match=r"pickled whole module \(.*src\.modeling\.ImageEncoder.*convert_pickled_module",
    ):
        read_state_dict(path)
    with pytest.raises(LinesError, match="allow_unsafe_unpickling=True"):
        convert_pickled_module(path, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_pickled_module_converted_on_opt_in(pickled_image_encoder, tmp_path):
    path, expected = pickled_image_encoder
    out = tmp_path / "converted.safetensors"
    man = convert_pickled_module(path, out, allow_unsafe_unpickling=True)
    assert man["root_class"] == "src.modeling.ImageEncoder"
    assert "src.modeling.ImageEncoder" in man["stubbed_globals"]
    assert any(g.startswith("open_clip.") for g in man["stubbed_globals"])
    assert "src" not in sys.modules  # nothing was imported to read it
    got = load_state_dict(out)
    _equal(got, expected)
    assert "model.visual.proj" in got and "model.transformer.resblocks.0.ln_1.weight" not in got
    # The converted file then reads like a tall_masks one.
    prepared, _ = load_canonical(out, tmp_path)
    _equal(
        prepared.state_dict,
        {k[len("model.") :]: v for k, v in expected.items() if k.startswith("model.visual.")},
    )


def test_plain_state_dict_pickle_is_not_a_module(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save({f"model.{k}": v for k, v in openclip_state_dict(0).items()}, p)
    assert module_classes(p) == []
