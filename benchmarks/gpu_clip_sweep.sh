#!/usr/bin/env bash
# Issue 13's evaluation part on a lent GPU: the fast evaluator's CUDA tests, then the β sweep
# benchmark (standard vs fast evaluator, bare forward in the same run), results into OUT:
#   bash benchmarks/gpu_clip_sweep.sh OUT MACHINE "MODELS" "MODES" [N_FINETUNED]
set -u
OUT=${1:?OUT}; MACHINE=${2:-h100}; MODELS=${3:-ViT-B-32}
MODES=${4:-"off max-autotune-no-cudagraphs default"}; NFT=${5:-8}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
if [ "${TESTS:-1}" = 1 ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_clip_fast.py \
    tests/test_clip_evaluate.py > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests rc=$?" >> "$OUT/gpu_tests.log"; tail -3 "$OUT/gpu_tests.log"
fi
# shellcheck disable=SC2086
timeout "${LIMIT:-420}" python3 benchmarks/bench_clip_sweep.py run --machine "$MACHINE" \
  --models $MODELS --modes $MODES --n_finetuned "$NFT" --out "$OUT" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -v -i warn "$OUT/sweep.log" | tail -20
