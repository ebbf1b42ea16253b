"""Prefect tasks only: thin tasks over DVC (``dvc``). They pass paths, stage names and small
records, never tensors. The rest of the orchestration support is in ``orchestration/``;
``lines/`` never imports either."""
