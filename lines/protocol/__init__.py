"""The experiment protocol of the LiNeS paper (Wang et al., ICLR 2025), written once over the
suite interface (:mod:`lines.protocol.suite`): single-task editing, multi-task merging with and
without LiNeS, soups, WiSE-FT; coefficient selection on val, normalisation, target/control; the
typed stage outputs, their writers and the report pieces shared by every suite.

A suite (``lines.pipeline`` for the embedded text and vision suites, ``lines.clip`` for CLIP)
provides checkpoints and an evaluator and nothing else; nothing here knows which suite it runs.
"""
