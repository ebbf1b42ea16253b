"""Thin Prefect tasks over the DVC stages and the tracking of their results. They pass paths,
stage names and small records, never tensors; ``lines/`` never imports this package."""
