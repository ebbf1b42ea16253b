#!/usr/bin/env bash
# The LLM suite (llm/dvc.yaml, llm/params.yaml) on a GPU machine without DVC and without a package
# registry (what it needs: benchmarks/llm_gpu/setup.sh): rewarded soups first (sft → rl@reward →
# rsoups), then the classification half (finetune@task → base_eval → edit → merge → report), then
# schedules.
#
#   bash benchmarks/llm_gpu/run.sh STASH OUT   # STASH: smol.part-*, smol.sha256, *.whl, ds.tgz
set -u
STASH=$1 OUT=$2
. benchmarks/llm_gpu/setup.sh
run --stages fetch sft rl rsoups || exit 1
run --stages finetune base_eval edit merge report || exit 1
run --stages schedules report
echo "LLM GPU RUN DONE"
