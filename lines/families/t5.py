"""T5 encoder-decoders (Raffel et al. 2020): T5, mT5, Flan-T5, and T5EncoderModel.

Two stacks, numbered through in order: encoder blocks ``encoder.block.{i}`` are ℓ = 1..Le, then
decoder blocks ``decoder.block.{j}`` are ℓ = Le+1..Le+Ld, so L = Le + Ld (e.g. t5-base: 12 + 12
= 24; an encoder-only checkpoint has L = Le). The block index is the number after the
``block.`` container: ``encoder.block.3.layer.1.`` is encoder block 3 (ℓ = 4), never the ``.1.``
of its sub-layer, which the reference's substring match would pick up.

Input side: ``shared`` and the ``embed_tokens`` of either stack (tied to ``shared`` in the
original T5). ``encoder.final_layer_norm`` closes the encoder stack: under the ``depth`` policy
it joins the last encoder block Le. Output side: ``decoder.final_layer_norm``, ``lm_head`` and
task heads. Under ``reference`` all of these are in block 1.
"""

from lines.families.base import Family, Stack

FAMILY = Family(
    name="t5",
    description="T5 / mT5 / Flan-T5 (encoder.block.{i} = 1..Le, then decoder.block.{j} = Le+1..)",
    stacks=(
        Stack("encoder", r"(?:^|\.)encoder\.block\.(\d+)\."),
        Stack("decoder", r"(?:^|\.)decoder\.block\.(\d+)\."),
    ),
    output_side=(
        r"(?:^|\.)decoder\.final_layer_norm\.",
        r"(?:^|\.)lm_head\.",
        r"(?:^|\.)classification_head\.",
        r"^classifier\.",
        r"^qa_outputs\.",
    ),
    stack_end=((r"(?:^|\.)encoder\.final_layer_norm\.", "encoder"),),
    priority=20,
    aliases=("mt5", "flan-t5", "t5-encoder"),
)
