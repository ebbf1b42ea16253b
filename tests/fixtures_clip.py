"""Tiny CLIP models for the CLIP tests: an open_clip CLIP small enough to build in milliseconds,
and the Hugging Face configs of the same sizes."""

from __future__ import annotations

import torch

from lines._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()

VISION = dict(width=64, layers=2, heads=4, patch_size=8, image_size=32, mlp_ratio=4.0)
TEXT = dict(width=32, layers=1, heads=2, context_length=77, vocab_size=49408)
EMBED_DIM = 48


def tiny_openclip(seed: int = 0, text: bool = True):
    """A tiny open_clip CLIP (QuickGELU, as OpenAI's models) with every parameter random, so that
    no layer norm is an identity that would hide a conversion mistake."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    vcfg = CLIPVisionCfg(
        layers=VISION["layers"],
        width=VISION["width"],
        head_width=VISION["width"] // VISION["heads"],
        patch_size=VISION["patch_size"],
        image_size=VISION["image_size"],
        mlp_ratio=VISION["mlp_ratio"],
    )
    tcfg = CLIPTextCfg(
        context_length=TEXT["context_length"],
        vocab_size=TEXT["vocab_size"],
        width=TEXT["width"],
        heads=TEXT["heads"],
        layers=TEXT["layers"],
    )
    model = CLIP(EMBED_DIM, vcfg, tcfg, quick_gelu=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(torch.log(torch.tensor(1 / 0.07)).item())
            elif name.endswith("weight") and p.ndim == 1:  # layer norms: around 1
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def openclip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The full open_clip CLIP state dict (no non-persistent buffers)."""
    return {k: v.detach().clone() for k, v in tiny_openclip(seed).state_dict().items()}


def hf_vision_config(**over):
    from transformers import CLIPVisionConfig

    kw = dict(
        hidden_size=VISION["width"],
        intermediate_size=int(VISION["width"] * VISION["mlp_ratio"]),
        num_hidden_layers=VISION["layers"],
        num_attention_heads=VISION["heads"],
        image_size=VISION["image_size"],
        patch_size=VISION["patch_size"],
        projection_dim=EMBED_DIM,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    kw.update(over)
    return CLIPVisionConfig(**kw)


def hf_text_config(**over):
    from transformers import CLIPTextConfig

    kw = dict(
        hidden_size=TEXT["width"],
        intermediate_size=4 * TEXT["width"],
        num_hidden_layers=TEXT["layers"],
        num_attention_heads=TEXT["heads"],
        max_position_embeddings=TEXT["context_length"],
        vocab_size=TEXT["vocab_size"],
        projection_dim=EMBED_DIM,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    kw.update(over)
    return CLIPTextConfig(**kw)
