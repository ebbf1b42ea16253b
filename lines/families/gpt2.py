"""GPT-2 (Radford et al. 2019) and its layout-mates (GPT-Neo, GPT-J): blocks ``h.{i}``, with or
without the ``transformer.`` prefix of the LM-head models.

Input side: token and position embeddings ``wte``, ``wpe``. Output side: the final norm ``ln_f``,
``lm_head`` (tied to ``wte`` in GPT-2) and a sequence-classification ``score`` head.
"""

from lines.families.base import Family, Stack

FAMILY = Family(
    name="gpt2",
    description="GPT-2 style decoders ((transformer.)h.{i})",
    stacks=(Stack("h", r"^(?:(?:.*\.)?transformer\.)?h\.(\d+)\."),),
    output_side=(r"(?:^|\.)ln_f\.", r"(?:^|\.)lm_head\.", r"(?:^|\.)score\."),
    priority=40,
    aliases=("gpt-2", "gpt-neo", "gptj", "gpt-j"),
)
