"""Hugging Face CLIP towers (``transformers`` CLIPModel, CLIPVisionModel, CLIPTextModel).

Vision tower: ``vision_model.encoder.layers.{i}`` are blocks 1..L (12 for ViT-B/32 and B/16, 24
for L/14), the open_clip ``visual.transformer.resblocks.{i}``. FusionBench's checkpoints
(``tanganke/clip-vit-*``, saved with transformers 4) carry the ``vision_model.`` prefix;
transformers 5 saves a CLIPVisionModel without it (``encoder.layers.{i}``), and both are accepted.
Input side: embeddings (class, patch, position) and ``pre_layrnorm`` (sic). Output side:
``post_layernorm``, ``visual_projection`` (absent from CLIPVisionModel) and an image
classification head.

Text tower: ``text_model.encoder.layers.{i}`` (or bare ``encoder.layers.{i}`` for a
transformers-5 CLIPTextModel). Output side: ``final_layer_norm`` and ``text_projection``.

A full CLIPModel holds both towers; detection prefers the vision tower (as open_clip's family
prefers the image tower), and the text tower's parameters then sit outside the blocks on the
input side. Bare ``encoder.layers.{i}`` is claimed by a tower only when the tower's own
embeddings or norms are present, so other encoders with that container are left alone.
"""

from lines.families.base import Family, Stack

FAMILIES = (
    Family(
        name="hf-clip-vision",
        description="HF CLIP vision tower (vision_model.encoder.layers.{i})",
        stacks=(Stack("vision", r"^(?:(?:.*\.)?vision_model\.)?encoder\.layers\.(\d+)\."),),
        output_side=(
            r"^(?:(?:.*\.)?vision_model\.)?post_layernorm\.",
            r"(?:^|\.)visual_projection\.",
            r"^classifier\.",
        ),
        priority=12,
        requires=(
            r"^(?:(?:.*\.)?vision_model\.)?(?:embeddings\.patch_embedding|pre_layrnorm|post_layernorm)\.",
        ),
        aliases=("hf-clip", "clip-vision", "clipvision"),
    ),
    Family(
        name="hf-clip-text",
        description="HF CLIP text tower (text_model.encoder.layers.{i})",
        stacks=(Stack("text", r"^(?:(?:.*\.)?text_model\.)?encoder\.layers\.(\d+)\."),),
        output_side=(
            r"^(?:(?:.*\.)?text_model\.)?final_layer_norm\.",
            r"(?:^|\.)text_projection\.",
        ),
        priority=13,
        requires=(
            r"^(?:(?:.*\.)?text_model\.)?(?:embeddings\.token_embedding|final_layer_norm)\.",
        ),
        aliases=("clip-text",),
    ),
)
