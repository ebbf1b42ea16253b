"""LLaMA-style decoders: LLaMA (Touvron et al. 2023), Mistral, Qwen2 and the many models that
share the ``model.layers.{i}`` layout (``layers.{i}`` for a bare base model, a
``language_model.`` container in multimodal wrappers, any outer prefix such as PEFT's
``base_model.model.``).

Input side: ``embed_tokens``. Output side: the final ``norm``, ``lm_head`` and a ``score`` head.
The container must be ``layers`` directly under the model (or at the root), so HF CLIP's
``encoder.layers.{i}`` or BART's ``model.encoder.layers.{i}`` are not taken for LLaMA blocks, and
a bare ``layers.{i}`` checkpoint is detected as LLaMA only with ``embed_tokens`` or ``norm``
(transformers 5's ViTModel also saves ``layers.{i}``; pass ``--family llama`` to force it).
"""

from lines.families.base import Family, Stack

_MODEL = r"^(?:(?:.*\.)?(?:model|language_model)\.)?"

FAMILY = Family(
    name="llama",
    description="LLaMA / Mistral / Qwen2 decoders ((model.)layers.{i})",
    stacks=(Stack("layers", _MODEL + r"layers\.(\d+)\."),),
    output_side=(_MODEL + r"norm\.", r"(?:^|\.)lm_head\.", r"(?:^|\.)score\."),
    priority=50,
    # Bare ``layers.{i}`` is common (transformers 5 saves ViTModel that way): detect LLaMA only
    # with its embeddings or final norm present, or under a ``model.`` container.
    requires=(_MODEL + r"(?:embed_tokens|norm)\.|(?:^|\.)(?:model|language_model)\.layers\.\d",),
    aliases=("mistral", "qwen2", "qwen"),
)
