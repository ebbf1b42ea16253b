"""A dependency-free copy of open_clip's ViT image tower, for evaluation loops.

``build_vision_tower(sd)`` returns a module with open_clip's ``VisionTransformer`` parameter
names and the same operations in the same order (conv patch embedding, class token, positional
embedding, ``ln_pre``, residual blocks of ``nn.MultiheadAttention`` and a QuickGELU/GELU MLP with
open_clip's cast-back LayerNorm, ``ln_post`` on the class token, ``@ proj``), for the
configuration every OpenAI/tall_masks/FusionBench CLIP ViT uses (learnable positional embedding,
token pooling, no layer scale, no patch dropout at evaluation). It is checked bit-exact against
open_clip's tower on CPU (tests/test_clip_flow.py) and under bf16 autocast on GPU
(benchmarks/bench_clip_eval.py).

Why it exists: importing open_clip costs seconds per process (it imports torchvision,
transformers and torch._dynamo), which each stage of the CLIP pipeline would pay; and the GPU
machine has no open_clip. ``lines.clip.model.build_image_encoder`` stays the reference builder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from lines.clip.convert import strip_prefix, to_openclip
from lines.clip.model import vision_spec


class _LayerNorm(nn.LayerNorm):
    """open_clip's ``LayerNorm``: the result cast back to the input's dtype (under autocast the
    residual stream stays in the autocast dtype, as in open_clip)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(orig)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = _LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = _LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, mlp_width)),
                    ("gelu", _QuickGELU() if quick_gelu else nn.GELU()),
                    ("c_proj", nn.Linear(mlp_width, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [_Block(width, heads, mlp_width, quick_gelu) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x)
        return x


class LeanVisionTransformer(nn.Module):
    """open_clip's ``VisionTransformer`` (token pooling, learnable positions), inference only."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        output_dim: int,
        quick_gelu: bool = True,
    ):
        super().__init__()
        self.image_size = (image_size, image_size)
        self.patch_size = (patch_size, patch_size)
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = _LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, int(width * mlp_ratio), quick_gelu)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x)
        return x[:, 0] @ self.proj


def build_vision_tower(
    sd: Mapping[str, torch.Tensor],
    *,
    heads: int | None = None,
    quick_gelu: bool = True,
    projection: torch.Tensor | None = None,
) -> LeanVisionTransformer:
    """The image tower of any supported CLIP layout, loaded strictly (as ``build_image_encoder``,
    without importing open_clip)."""
    from lines.clip.model import load_strict

    oc, _ = to_openclip(sd)
    visual = {k: v for k, v in oc.items() if k.startswith("visual.")}
    if "visual.proj" not in visual and projection is not None:
        visual["visual.proj"] = projection
    spec = vision_spec(visual, heads)
    module = LeanVisionTransformer(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        mlp_ratio=spec.mlp_ratio,
        output_dim=spec.output_dim,
        quick_gelu=quick_gelu,
    )
    load_strict(module, strip_prefix(visual, "visual."), "image tower")
    module.eval()
    module.lines_spec = spec  # type: ignore[attr-defined]
    return module
