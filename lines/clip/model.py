"""open_clip towers built from state dicts, their sizes read from the tensors.

Checkpoints from tall_masks, task_vectors and FusionBench are all OpenAI CLIP ViTs: the number of
attention heads is not stored in the weights, and OpenAI's models use 64-wide heads (B/32, B/16:
12 heads of 64; L/14: 16 of 64; text towers: 8 or 12 of 64), so ``heads`` defaults to width / 64;
pass it for anything else. OpenAI's weights were trained with QuickGELU (``quick_gelu=True``, the
default here, as in open_clip's ``openai`` tag); LAION-trained open_clip weights use plain GELU.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lines.clip.convert import split_openclip, strip_prefix, to_openclip
from lines.errors import LinesError

DEFAULT_HEAD_WIDTH = 64


def import_open_clip():
    from lines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    return open_clip


def _heads(width: int, heads: int | None, what: str) -> int:
    if heads is None:
        if width % DEFAULT_HEAD_WIDTH:
            raise LinesError(
                f"{what} width {width} is not a multiple of 64: pass the number of heads"
            )
        return width // DEFAULT_HEAD_WIDTH
    if heads <= 0 or width % heads:
        raise LinesError(f"{what}: {heads} heads do not divide the width {width}")
    return heads


def _num_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = set()
    for k in sd:
        if k.startswith(prefix):
            idx.add(int(k[len(prefix) :].split(".", 1)[0]))
    if not idx or sorted(idx) != list(range(len(idx))):
        raise LinesError(f"blocks under '{prefix}' are missing or not numbered 0..n-1")
    return len(idx)


@dataclass(frozen=True)
class VisionSpec:
    """Sizes of an open_clip ViT image tower."""

    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int
    mlp_ratio: float
    output_dim: int


@dataclass(frozen=True)
class TextSpec:
    """Sizes of an open_clip text tower."""

    width: int
    layers: int
    heads: int
    context_length: int
    vocab_size: int
    mlp_ratio: float
    output_dim: int


def vision_spec(visual: Mapping[str, torch.Tensor], heads: int | None = None) -> VisionSpec:
    """Sizes of the image tower in ``visual`` (keys ``visual.*``)."""
    try:
        conv = visual["visual.conv1.weight"]
        pos = visual["visual.positional_embedding"]
        fc = visual["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    except KeyError as e:
        raise LinesError(f"image tower incomplete: {e.args[0]} missing") from None
    if "visual.proj" not in visual:
        raise LinesError(
            "image tower has no 'visual.proj' (a CLIPVisionModel without projection): fill it "
            "from the pretrained CLIP (canonical_visual(..., projection=...))"
        )
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(pos.shape[0]) - 1)
    if grid * grid + 1 != pos.shape[0]:
        raise LinesError(f"positional_embedding has {pos.shape[0]} rows: not 1 + a square grid")
    return VisionSpec(
        width=width,
        layers=_num_blocks(visual, "visual.transformer.resblocks."),
        heads=_heads(width, heads, "image tower"),
        patch_size=patch,
        image_size=grid * patch,
        mlp_ratio=int(fc.shape[0]) / width,
        output_dim=int(visual["visual.proj"].shape[1]),
    )


def text_spec(text: Mapping[str, torch.Tensor], heads: int | None = None) -> TextSpec:
    """Sizes of the text tower in ``text`` (open_clip top-level text keys)."""
    try:
        tok = text["token_embedding.weight"]
        pos = text["positional_embedding"]
        fc = text["transformer.resblocks.0.mlp.c_fc.weight"]
        proj = text["text_projection"]
    except KeyError as e:
        raise LinesError(f"text tower incomplete: {e.args[0]} missing") from None
    width = int(tok.shape[1])
    return TextSpec(
        width=width,
        layers=_num_blocks(text, "transformer.resblocks."),
        heads=_heads(width, heads, "text tower"),
        context_length=int(pos.shape[0]),
        vocab_size=int(tok.shape[0]),
        mlp_ratio=int(fc.shape[0]) / width,
        output_dim=int(proj.shape[1]),
    )


def build_image_encoder(
    sd: Mapping[str, torch.Tensor],
    *,
    heads: int | None = None,
    quick_gelu: bool = True,
    projection: torch.Tensor | None = None,
) -> nn.Module:
    """An open_clip ``VisionTransformer`` (image → projected embedding) loaded strictly from any
    supported CLIP layout. ``projection`` fills a missing ``visual.proj``."""
    oc, _ = to_openclip(sd)
    visual = {k: v for k, v in oc.items() if k.startswith("visual.")}
    if "visual.proj" not in visual and projection is not None:
        visual["visual.proj"] = projection
    spec = vision_spec(visual, heads)
    import_open_clip()
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = CLIPVisionCfg(
        layers=spec.layers,
        width=spec.width,
        head_width=spec.width // spec.heads,
        mlp_ratio=spec.mlp_ratio,
        patch_size=spec.patch_size,
        image_size=spec.image_size,
    )
    module = _build_vision_tower(spec.output_dim, cfg, quick_gelu=quick_gelu)
    load_strict(module, strip_prefix(visual, "visual."), "image tower")
    module.eval()
    module.lines_spec = spec  # type: ignore[attr-defined]
    return module


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        detail = f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'"
        raise LinesError(f"{what}: state dict does not fit the open_clip module ({detail})")
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise LinesError(
                f"{what}: shape mismatch at '{k}': {list(v.shape)} vs {list(own[k].shape)}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def tensors_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted key order: identifies the
    weights whatever file layout they came from."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{list(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TextEncoder:
    """The pretrained text tower with its tokenizer and logit scale: what zero-shot heads need.

    ``model_id`` is a content hash of the text-tower weights and logit scale, so heads cached for
    one file are found again for the same weights in another layout."""

    def __init__(
        self,
        module: nn.Module,
        tokenizer,
        logit_scale: torch.Tensor,
        model_id: str,
        spec: TextSpec,
    ):
        self.module = module
        self.tokenizer = tokenizer
        self.logit_scale = logit_scale
        self.model_id = model_id
        self.spec = spec

    @torch.no_grad()
    def encode(self, texts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """Unnormalised text embeddings [len(texts), dim], float32."""
        tokens = self.tokenizer(list(texts)).to(device)
        self.module.to(device)
        return self.module(tokens).float()

    def describe(self) -> dict[str, object]:
        return {"model_id": self.model_id, **asdict(self.spec)}


def build_text_encoder(
    sd: Mapping[str, torch.Tensor],
    *,
    heads: int | None = None,
    quick_gelu: bool = True,
    tokenizer=None,
) -> TextEncoder:
    """The text tower of a full CLIP state dict (open_clip or HF layout), with open_clip's BPE
    tokenizer (``SimpleTokenizer``, OpenAI's vocabulary) unless ``tokenizer`` is given."""
    oc, _ = to_openclip(sd)
    _, text, rest = split_openclip(oc)
    if "logit_scale" not in rest:
        raise LinesError("checkpoint has no 'logit_scale': not a full CLIP model")
    spec = text_spec(text, heads)
    oc_mod = import_open_clip()
    from open_clip.model import CLIPTextCfg, _build_text_tower

    cfg = CLIPTextCfg(
        context_length=spec.context_length,
        vocab_size=spec.vocab_size,
        width=spec.width,
        heads=spec.heads,
        layers=spec.layers,
        mlp_ratio=spec.mlp_ratio,
    )
    module = _build_text_tower(spec.output_dim, cfg, quick_gelu=quick_gelu)
    load_strict(module, text, "text tower")
    module.eval()
    if tokenizer is None:
        tokenizer = oc_mod.tokenizer.SimpleTokenizer(context_length=spec.context_length)
        if len(tokenizer.encoder) != spec.vocab_size:
            raise LinesError(
                f"text tower has a vocabulary of {spec.vocab_size}, open_clip's BPE tokenizer "
                f"{len(tokenizer.encoder)}: pass a matching tokenizer"
            )
    logit_scale = rest["logit_scale"].detach().float().reshape(())
    model_id = tensors_digest({**text, "logit_scale": rest["logit_scale"]})
    return TextEncoder(module, tokenizer, logit_scale, model_id, spec)
