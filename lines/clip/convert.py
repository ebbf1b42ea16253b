"""Key conversion between open_clip CLIP state dicts and Hugging Face ``transformers`` CLIP ones.

Pure functions on ``{name: Tensor}`` dicts, both ways, for the image tower and the text tower.
Every input key must be understood: an unknown key raises ``LinesError`` naming it, so a layout we
do not know never converts silently into a half-empty model. Tensors are not copied except where
the layout forces it (q/k/v split and join, projection transposes), so a round trip is bit-exact.

Mapping (image tower; ``visual.`` on the open_clip side, ``vision_model.`` on the HF side)::

    conv1.weight                        embeddings.patch_embedding.weight
    class_embedding                     embeddings.class_embedding
    positional_embedding                embeddings.position_embedding.weight
    ln_pre.*                            pre_layrnorm.*             (sic: HF's spelling)
    transformer.resblocks.{i}.ln_1.*    encoder.layers.{i}.layer_norm1.*
      .attn.in_proj_weight / _bias      .self_attn.{q,k,v}_proj.weight / .bias  (split in 3 rows)
      .attn.out_proj.*                  .self_attn.out_proj.*
      .ln_2.*                           .layer_norm2.*
      .mlp.c_fc.* / .mlp.c_proj.*       .mlp.fc1.* / .mlp.fc2.*
    ln_post.*                           post_layernorm.*
    proj            [width, dim]        visual_projection.weight [dim, width]  (top level; absent
                                                                   in CLIPVisionModel)

Text tower (no prefix on the open_clip side, ``text_model.`` on the HF side): ``token_embedding``
↔ ``embeddings.token_embedding``, ``positional_embedding`` ↔ ``embeddings.position_embedding.weight``,
the same block mapping, ``ln_final`` ↔ ``final_layer_norm``, ``text_projection`` [width, dim] ↔
top-level ``text_projection.weight`` [dim, width]; ``logit_scale`` is the same on both sides.

HF checkpoints may carry ``*.embeddings.position_ids`` buffers (older transformers); they hold no
weights and are dropped. transformers 5 saves ``CLIPVisionModel`` without the ``vision_model.``
prefix; older versions (and the FusionBench checkpoints on the hub) keep it: both are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch

from lines.errors import LinesError

StateDict = dict[str, torch.Tensor]

# Per-block renames shared by both towers (open_clip suffix, HF suffix).
_BLOCK = (
    ("ln_1.weight", "layer_norm1.weight"),
    ("ln_1.bias", "layer_norm1.bias"),
    ("attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("ln_2.weight", "layer_norm2.weight"),
    ("ln_2.bias", "layer_norm2.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"),
    ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"),
    ("mlp.c_proj.bias", "mlp.fc2.bias"),
)
_VISION_TOP = (
    ("conv1.weight", "embeddings.patch_embedding.weight"),
    ("class_embedding", "embeddings.class_embedding"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("ln_pre.weight", "pre_layrnorm.weight"),
    ("ln_pre.bias", "pre_layrnorm.bias"),
    ("ln_post.weight", "post_layernorm.weight"),
    ("ln_post.bias", "post_layernorm.bias"),
)
_TEXT_TOP = (
    ("token_embedding.weight", "embeddings.token_embedding.weight"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("ln_final.weight", "final_layer_norm.weight"),
    ("ln_final.bias", "final_layer_norm.bias"),
)
# Keys the open_clip CLIP class keeps at top level for its text tower.
TEXT_KEYS_TOP = (
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "ln_final.bias",
)
_OC_BLOCK_RX = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_HF_BLOCK_RX = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_QKV = ("q_proj", "k_proj", "v_proj")
_HF_IGNORED = re.compile(r"(^|\.)embeddings\.position_ids$")

HFTarget = Literal["clip", "vision", "vision_with_projection", "text", "text_with_projection"]


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def add_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {prefix + k: v for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------
# One tower, unprefixed keys on both sides


def _tower_oc_to_hf(
    sub: Mapping[str, torch.Tensor], top: tuple[tuple[str, str], ...], what: str, shown: str = ""
) -> StateDict:
    out: StateDict = {}
    top_map = dict(top)
    block_map = dict(_BLOCK)
    for k, v in sub.items():
        if k in top_map:
            out[top_map[k]] = v
            continue
        m = _OC_BLOCK_RX.match(k)
        if m:
            i, rest = m.group(1), m.group(2)
            base = f"encoder.layers.{i}."
            if rest in block_map:
                out[base + block_map[rest]] = v
                continue
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                if v.shape[0] % 3:
                    raise LinesError(
                        f"open_clip {what} key '{shown}{k}': first dimension not divisible by 3"
                    )
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(_QKV, v.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}.{kind}"] = part.clone()
                continue
        raise LinesError(f"open_clip {what} key '{shown}{k}' has no Hugging Face CLIP equivalent")
    return out


def _tower_hf_to_oc(
    sub: Mapping[str, torch.Tensor], top: tuple[tuple[str, str], ...], what: str, shown: str = ""
) -> StateDict:
    out: StateDict = {}
    top_map = {h: o for o, h in top}
    block_map = {h: o for o, h in _BLOCK}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sub.items():
        if _HF_IGNORED.search(k):
            continue
        if k in top_map:
            out[top_map[k]] = v
            continue
        m = _HF_BLOCK_RX.match(k)
        if m:
            i, rest = m.group(1), m.group(2)
            base = f"transformer.resblocks.{i}."
            if rest in block_map:
                out[base + block_map[rest]] = v
                continue
            parts = rest.split(".")
            if len(parts) == 3 and parts[0] == "self_attn" and parts[1] in _QKV:
                qkv.setdefault((i, parts[2]), {})[parts[1]] = v
                continue
        raise LinesError(f"Hugging Face CLIP {what} key '{shown}{k}' has no open_clip equivalent")
    for (i, kind), parts in sorted(qkv.items()):
        missing = [n for n in _QKV if n not in parts]
        if missing:
            raise LinesError(
                f"Hugging Face CLIP {what} layer {i}: {missing[0]}.{kind} missing (q, k and v "
                "are needed to form open_clip's in_proj)"
            )
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{i}.attn.{name}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    return out


# ----------------------------------------------------------------------------------------------
# Whole models


def split_openclip(
    sd: Mapping[str, torch.Tensor],
) -> tuple[StateDict, StateDict, StateDict]:
    """(image tower without ``visual.``, text tower (incl. ``text_projection``), the rest:
    ``logit_scale``) of an open_clip CLIP state dict without ``model.`` prefix."""
    visual = strip_prefix(sd, "visual.")
    text: StateDict = {}
    rest: StateDict = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            continue
        if k in TEXT_KEYS_TOP or k == "text_projection" or k.startswith("transformer."):
            text[k] = v
        else:
            rest[k] = v
    return visual, text, rest


def openclip_to_hf(
    sd: Mapping[str, torch.Tensor],
    target: HFTarget = "clip",
    *,
    vision_prefix: str = "vision_model.",
    text_prefix: str = "text_model.",
) -> StateDict:
    """Convert an open_clip CLIP state dict (``visual.*`` and/or text keys, optional ``model.``
    prefix) to Hugging Face keys.

    ``target``: ``clip`` (CLIPModel: both towers, both projections, logit_scale), ``vision``
    (CLIPVisionModel: no projection), ``vision_with_projection``, ``text``,
    ``text_with_projection``. Keys of the tower(s) not asked for are dropped; keys that belong to
    no tower raise. ``vision_prefix=""`` writes transformers-5-style CLIPVisionModel keys.
    """
    if sd and all(k.startswith("model.") for k in sd):
        sd = strip_prefix(sd, "model.")
    visual, text, rest = split_openclip(sd)
    unknown = [k for k in rest if k != "logit_scale"]
    if unknown:
        raise LinesError(f"open_clip key '{unknown[0]}' belongs to no CLIP tower")
    out: StateDict = {}
    want_vision = target in ("clip", "vision", "vision_with_projection")
    want_text = target in ("clip", "text", "text_with_projection")
    if want_vision:
        if not visual:
            raise LinesError("no open_clip image-tower keys ('visual.*') to convert")
        vis = dict(visual)
        proj = vis.pop("proj", None)
        out.update(
            add_prefix(_tower_oc_to_hf(vis, _VISION_TOP, "image-tower", "visual."), vision_prefix)
        )
        if target != "vision":
            if proj is None:
                raise LinesError("open_clip 'visual.proj' missing: cannot write visual_projection")
            out["visual_projection.weight"] = proj.t().contiguous()
    if want_text:
        if not text:
            raise LinesError("no open_clip text-tower keys to convert")
        txt = dict(text)
        tproj = txt.pop("text_projection", None)
        out.update(add_prefix(_tower_oc_to_hf(txt, _TEXT_TOP, "text-tower"), text_prefix))
        if target != "text":
            if tproj is None:
                raise LinesError("open_clip 'text_projection' missing")
            out["text_projection.weight"] = tproj.t().contiguous()
    if target == "clip" and "logit_scale" in rest:
        out["logit_scale"] = rest["logit_scale"]
    return out


def hf_to_openclip(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Convert Hugging Face CLIP keys to open_clip CLIP keys (``visual.*``, text keys at top level,
    ``logit_scale``). Accepts CLIPModel, CLIPVisionModel(WithProjection) with or without the
    ``vision_model.`` prefix, and CLIPTextModel(WithProjection)."""
    vis: StateDict = {}
    txt: StateDict = {}
    out: StateDict = {}
    # transformers 5 saves CLIPVisionModel and CLIPTextModel without their tower prefix; the
    # tower is then told by its embedding (patch embedding vs token embedding).
    bare: StateDict | None = None
    vis_shown, txt_shown = "vision_model.", "text_model."
    if any(k.startswith("embeddings.patch_embedding.") for k in sd):
        bare, vis_shown = vis, ""
    elif any(k.startswith("embeddings.token_embedding.") for k in sd):
        bare, txt_shown = txt, ""
    for k, v in sd.items():
        if k.startswith("vision_model."):
            vis[k[len("vision_model.") :]] = v
        elif k.startswith("text_model."):
            txt[k[len("text_model.") :]] = v
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif k == "logit_scale":
            out["logit_scale"] = v
        elif _HF_IGNORED.search(k):
            continue
        elif bare is not None:
            bare[k] = v
        else:
            raise LinesError(f"Hugging Face CLIP key '{k}' has no open_clip equivalent")
    if vis:
        out.update(
            add_prefix(_tower_hf_to_oc(vis, _VISION_TOP, "image-tower", vis_shown), "visual.")
        )
    if txt:
        out.update(_tower_hf_to_oc(txt, _TEXT_TOP, "text-tower", txt_shown))
    if not vis and not txt:
        raise LinesError("no Hugging Face CLIP tower keys found to convert")
    return out


# ----------------------------------------------------------------------------------------------
# Layout detection and the canonical image-tower form used for merging

Layout = Literal[
    "openclip",  # open_clip CLIP / image tower, keys visual.* (+ text keys)
    "openclip-prefixed",  # the same under model. (tall_masks, task_vectors ImageEncoder)
    "openclip-visual-bare",  # an open_clip VisionTransformer's own state dict (conv1.weight, ...)
    "hf",  # transformers CLIP, any of the CLIPModel / CLIPVisionModel / CLIPTextModel variants
]


def detect_layout(keys: list[str] | tuple[str, ...]) -> Layout:
    ks = list(keys)
    if not ks:
        raise LinesError("empty state dict: cannot tell its layout")
    if any(k.startswith("model.visual.") for k in ks):
        return "openclip-prefixed"
    if any(k.startswith("visual.") for k in ks) or "token_embedding.weight" in ks:
        return "openclip"
    if "conv1.weight" in ks and any(k.startswith("transformer.resblocks.") for k in ks):
        return "openclip-visual-bare"
    if any(
        k.startswith(
            (
                "vision_model.",
                "text_model.",
                "embeddings.patch_embedding.",
                "embeddings.token_embedding.",
            )
        )
        for k in ks
    ):
        return "hf"
    sample = ", ".join(ks[:3])
    raise LinesError(f"not a CLIP state dict that lines knows (first keys: {sample})")


def to_openclip(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, Layout]:
    """Any supported layout → open_clip CLIP keys (``visual.*``, text keys, ``logit_scale``)."""
    layout = detect_layout(list(sd))
    if layout == "openclip-prefixed":
        stray = [k for k in sd if not k.startswith("model.")]
        if stray:
            raise LinesError(f"key '{stray[0]}' lacks the 'model.' prefix the other keys have")
        return strip_prefix(sd, "model."), layout
    if layout == "openclip":
        return dict(sd), layout
    if layout == "openclip-visual-bare":
        return add_prefix(sd, "visual."), layout
    return hf_to_openclip(sd), layout


def canonical_visual(
    sd: Mapping[str, torch.Tensor], projection: torch.Tensor | None = None
) -> tuple[StateDict, dict[str, object]]:
    """The image tower as ``visual.*`` open_clip keys: the one form every CLIP checkpoint is
    brought to before merging, whatever its source layout.

    Text-tower keys (tall_masks and task_vectors files carry token_embedding, ln_final,
    text_projection, logit_scale, whose task vectors are zero) are dropped and reported.
    ``projection`` fills ``visual.proj`` when the source has none (HF CLIPVisionModel, as in
    FusionBench, keeps the pretrained CLIP's projection frozen outside the checkpoint).
    Returns (state dict, report)."""
    oc, layout = to_openclip(sd)
    visual = {k: v for k, v in oc.items() if k.startswith("visual.")}
    dropped = sorted(k for k in oc if not k.startswith("visual."))
    filled: list[str] = []
    if "visual.proj" not in visual:
        if projection is not None:
            visual["visual.proj"] = projection
            filled.append("visual.proj")
    report: dict[str, object] = {"layout": layout, "dropped": dropped, "filled": filled}
    return visual, report
