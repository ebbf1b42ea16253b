"""The CLIP benchmark path: checkpoint layouts and sources, the 20-task suite, zero-shot heads and
a cached, batched evaluator.

- ``convert``: open_clip ↔ Hugging Face CLIP keys, both towers, both ways.
- ``model``: open_clip towers built from state dicts (sizes read from the tensors).
- ``sources``: ``openclip:``/``hf:`` references and local paths, the community layouts
  (tall_masks, FusionBench, task_vectors) brought to one canonical safetensors form.
- ``datasets``: the 20 tasks and ImageNet with its OOD sets (class names, templates, suites,
  on-disk readers, the reference validation split).
- ``heads``: zero-shot classification heads, cached on disk.
- ``evaluate``: top-1 and normalised accuracy over preprocessed-tensor caches.

Importing this package imports neither torchvision nor open_clip; the modules that need them load
them lazily.
"""
