"""open_clip CLIP towers (Radford et al. 2021; Cherti et al. 2023, open_clip).

Image tower: ``visual.transformer.resblocks.{i}`` are blocks 1..L (12 for ViT-B/32 and B/16,
24 for L/14). The community checkpoints (tall_masks, task_vectors) carry a ``model.`` prefix and
leftover text keys (token_embedding, positional_embedding, ln_final, text_projection,
logit_scale): those sit outside the blocks on the input side (their task vectors are zero).
Output side: ``visual.ln_post`` and ``visual.proj``.
Text tower: ``transformer.resblocks.{i}`` (no ``visual.``); output side ``ln_final`` and
``text_projection``.
"""

from lines.families.base import Family, Stack

FAMILIES = (
    Family(
        name="openclip-vit",
        description="open_clip ViT image tower (visual.transformer.resblocks.{i}); optional 'model.' prefix",
        stacks=(Stack("visual", r"^(?:model\.)?visual\.transformer\.resblocks\.(\d+)\."),),
        output_side=(r"^(?:model\.)?visual\.ln_post\.", r"^(?:model\.)?visual\.proj$"),
        priority=10,
        aliases=("open_clip", "openclip", "clip-vit"),
    ),
    Family(
        name="openclip-text",
        description="open_clip text tower (transformer.resblocks.{i}); optional 'model.' prefix",
        stacks=(Stack("text", r"^(?:model\.)?transformer\.resblocks\.(\d+)\."),),
        output_side=(r"^(?:model\.)?ln_final\.", r"^(?:model\.)?text_projection$"),
        priority=11,
    ),
)
