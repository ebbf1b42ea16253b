"""open_clip ↔ Hugging Face CLIP conversion: same embeddings from both libraries, bit-exact round
trips, strict key checks."""

from __future__ import annotations

import pytest
import torch
from fixtures_clip import EMBED_DIM, VISION, hf_text_config, hf_vision_config, openclip_state_dict
from fixtures_clip import tiny_openclip as _tiny

from lines.clip.convert import (
    canonical_visual,
    detect_layout,
    hf_to_openclip,
    openclip_to_hf,
    strip_prefix,
    to_openclip,
)
from lines.clip.model import build_image_encoder, build_text_encoder, vision_spec
from lines.errors import LinesError


@pytest.fixture(scope="module")
def oc_model():
    return _tiny(0)


@pytest.fixture(scope="module")
def oc_sd(oc_model):
    return {k: v.detach().clone() for k, v in oc_model.state_dict().items()}


def _images(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, VISION["image_size"], VISION["image_size"], generator=g)


def _bit_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_hf_vision_with_projection_matches_open_clip(oc_model, oc_sd):
    from transformers import CLIPVisionModelWithProjection

    hf = CLIPVisionModelWithProjection(hf_vision_config()).eval()
    conv = openclip_to_hf(oc_sd, "vision_with_projection")
    missing, unexpected = hf.load_state_dict(conv, strict=True)
    assert not missing and not unexpected
    x = _images()
    with torch.no_grad():
        ref = oc_model.encode_image(x)
        got = hf(pixel_values=x).image_embeds
    assert ref.shape == (3, EMBED_DIM)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_hf_vision_model_without_projection_and_back(oc_model, oc_sd):
    """CLIPVisionModel (FusionBench's format) has no projection: its pooled output times the
    pretrained projection is open_clip's embedding; reading it back needs that projection."""
    from transformers import CLIPVisionModel

    hf = CLIPVisionModel(hf_vision_config()).eval()
    conv = openclip_to_hf(oc_sd, "vision", vision_prefix="")  # transformers-5 style keys
    hf.load_state_dict(conv, strict=True)
    x = _images()
    with torch.no_grad():
        pooled = hf(pixel_values=x).pooler_output
        ref = oc_model.encode_image(x)
    torch.testing.assert_close(pooled @ oc_sd["visual.proj"], ref, rtol=1e-5, atol=1e-5)

    # Back to open_clip with the pretrained projection filled in: same encoder.
    back, report = canonical_visual(conv, projection=oc_sd["visual.proj"])
    assert report["filled"] == ["visual.proj"] and report["layout"] == "hf"
    enc = build_image_encoder(back, heads=VISION["heads"])
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref, rtol=0, atol=0)


def test_round_trip_bit_exact_all_targets(oc_sd):
    # Full CLIPModel keys.
    hf = openclip_to_hf(oc_sd, "clip")
    assert "vision_model.pre_layrnorm.weight" in hf and "text_projection.weight" in hf
    assert hf["visual_projection.weight"].shape == oc_sd["visual.proj"].t().shape
    _bit_equal(hf_to_openclip(hf), oc_sd)
    # Image tower alone (with and without the vision_model. prefix).
    visual = {k: v for k, v in oc_sd.items() if k.startswith("visual.")}
    for prefix in ("vision_model.", ""):
        _bit_equal(
            hf_to_openclip(openclip_to_hf(visual, "vision_with_projection", vision_prefix=prefix)),
            visual,
        )
    # And HF → open_clip → HF.
    _bit_equal(openclip_to_hf(hf_to_openclip(hf), "clip"), hf)


def test_in_proj_split_order_is_q_k_v(oc_sd):
    hf = openclip_to_hf(oc_sd, "vision")
    w = oc_sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    d = VISION["width"]
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.q_proj.weight"], w[:d])
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.k_proj.weight"], w[d : 2 * d])
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.v_proj.weight"], w[2 * d :])


def test_text_tower_matches_hf(oc_model, oc_sd):
    from transformers import CLIPTextModelWithProjection

    hf = CLIPTextModelWithProjection(hf_text_config()).eval()
    conv = openclip_to_hf(oc_sd, "text_with_projection")
    hf.load_state_dict(conv, strict=True)
    enc = build_text_encoder(oc_sd, heads=2)
    tokens = enc.tokenizer(["a photo of a cat.", 'a blurry photo of the number: "7".'])
    with torch.no_grad():
        ref = oc_model.encode_text(tokens)
        got = hf(input_ids=tokens).text_embeds
        mine = enc.encode(["a photo of a cat.", 'a blurry photo of the number: "7".'])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)


def test_layouts_detected_and_canonicalised(oc_sd):
    prefixed = {f"model.{k}": v for k, v in oc_sd.items()}
    bare = strip_prefix(oc_sd, "visual.")
    assert detect_layout(list(prefixed)) == "openclip-prefixed"
    assert detect_layout(list(oc_sd)) == "openclip"
    assert detect_layout(list(bare)) == "openclip-visual-bare"
    assert detect_layout(list(openclip_to_hf(oc_sd))) == "hf"
    visual = {k: v for k, v in oc_sd.items() if k.startswith("visual.")}
    for sd in (
        prefixed,
        oc_sd,
        bare,
        openclip_to_hf(oc_sd),
        openclip_to_hf(oc_sd, "vision_with_projection"),
    ):
        got, report = canonical_visual(sd)
        _bit_equal(got, visual)
    _, report = canonical_visual(prefixed)
    assert "logit_scale" in report["dropped"] and "token_embedding.weight" in report["dropped"]


def test_spec_inferred_from_tensors(oc_sd):
    spec = vision_spec(oc_sd, heads=VISION["heads"])
    assert (spec.width, spec.layers, spec.patch_size, spec.image_size, spec.output_dim) == (
        64,
        2,
        8,
        32,
        EMBED_DIM,
    )
    assert spec.mlp_ratio == 4.0


def test_unknown_keys_are_refused(oc_sd):
    with pytest.raises(LinesError, match="visual.attn_pool.query"):
        openclip_to_hf({**oc_sd, "visual.attn_pool.query": torch.zeros(1)}, "vision")
    with pytest.raises(LinesError, match="vision_model.encoder.layers.0.self_attn.rope"):
        hf_to_openclip({"vision_model.encoder.layers.0.self_attn.rope": torch.zeros(1)})
    hf = openclip_to_hf(oc_sd, "vision")
    del hf["vision_model.encoder.layers.0.self_attn.k_proj.bias"]
    with pytest.raises(LinesError, match="k_proj.bias missing"):
        hf_to_openclip(hf)
    with pytest.raises(LinesError, match="not a CLIP state dict"):
        to_openclip({"encoder.layer.0.attention.self.query.weight": torch.zeros(1)})


def test_position_ids_buffers_are_ignored(oc_sd):
    hf = openclip_to_hf(oc_sd, "clip")
    hf["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    hf["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    _bit_equal(hf_to_openclip(hf), oc_sd)


def test_other_seed_differs():
    a, b = openclip_state_dict(0), openclip_state_dict(1)
    assert not torch.equal(a["visual.proj"], b["visual.proj"])
