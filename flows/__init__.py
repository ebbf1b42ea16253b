"""Prefect flows, one per experiment kind; they only orchestrate (``tasks/``) and own the MLflow
run. See docs/orchestration.md."""
