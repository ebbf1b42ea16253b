#!/usr/bin/env bash
# The GPU half of the merge benchmark, as run on a lent H100 (see benchmarks/RESULTS.md):
#   bash benchmarks/gpu_run.sh OUTDIR "CONFIGS" [EXTRA_CONFIGS]
# 1. the GPU tests (CUDA merges equal CPU merges), a cProfile of one TA and one TIES merge
# (ViT-B/32, N = 8; PROFILE=0 skips it), 2. the benchmark on CUDA for CONFIGS with
# ours / ours-nohash / baseline, 3. for EXTRA_CONFIGS the same merge on the CPU (GPU-vs-CPU check)
# and the per-β sweep. Results, RESULTS.md and logs are copied to OUTDIR. Each step has a time
# limit so the whole stays inside one 10-minute call; results are saved after every configuration.
set -u
OUT=${1:?OUTDIR}
CONFIGS=${2:-"ViT-B-32:8,14,20 ViT-L-14:8"}
EXTRA=${3:-"ViT-B-32:8"}
LIMIT=${LIMIT:-540}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - start))); }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc; free -g | head -2; python3 -c 'import torch, safetensors; print(torch.__version__, safetensors.__version__)'
} > "$OUT/machine.txt" 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_perf_semantics.py \
  > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" >> "$OUT/gpu_tests.log"
if [ "${PROFILE:-1}" = 1 ]; then
  for m in ta ties; do
    timeout 120 python3 benchmarks/profile_merge.py --device cuda --method $m --top 25 \
      >> "$OUT/profile.txt" 2>&1
  done
fi
# shellcheck disable=SC2086
timeout "$(left)" python3 benchmarks/bench_merge.py run --device cuda --machine h100 --append \
  --configs $CONFIGS --impls ours ours-nohash baseline --timeout 300 > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
if [ -n "$EXTRA" ] && [ "$(left)" -gt 30 ]; then
  # shellcheck disable=SC2086
  timeout "$(left)" python3 benchmarks/bench_merge.py run --device cuda --machine h100 --append \
    --configs $EXTRA --impls ours ours-cpu sweep --timeout 300 > "$OUT/bench_extra.log" 2>&1
  echo "extra rc=$?" >> "$OUT/bench_extra.log"
fi
python3 benchmarks/bench_merge.py report > /dev/null 2>&1
cp benchmarks/results/merge-h100.json benchmarks/RESULTS.md "$OUT/" 2>/dev/null
exit 0
