"""BERT-style encoders: BERT (Devlin et al. 2019), RoBERTa, MiniLM (all-MiniLM-L6-v2 is a
BertModel), MPNet. Blocks are ``encoder.layer.{i}``, with any model prefix (``bert.``,
``roberta.``, ``mpnet.``) or none. Input side: embeddings (and MPNet's shared
``encoder.relative_attention_bias``). Output side: pooler and task heads.
"""

from lines.families.base import Family, Stack

FAMILY = Family(
    name="bert",
    description="BERT / RoBERTa / MiniLM / MPNet encoders (encoder.layer.{i})",
    stacks=(Stack("encoder", r"(?:^|\.)encoder\.layer\.(\d+)\."),),
    output_side=(r"(?:^|\.)pooler\.", r"^classifier\.", r"^lm_head\.", r"^cls\.", r"^qa_outputs\."),
    priority=30,
    aliases=("roberta", "minilm", "mpnet"),
)
