#!/usr/bin/env bash
# Issue 13 on a lent GPU, one call: the CUDA tests (fast CLIP evaluator, GPU merges), the text and
# LLM suites' evaluation against their bare forward, and the merge benchmark at the current code
# (ViT-B/32, N = 8: read-ahead, resident, baseline, the bound), results into OUT:
#   bash benchmarks/gpu_eval_suites.sh OUT MACHINE TEXTBENCH
# TEXTBENCH holds the embedded default's fetch folder without model.safetensors (a lent GPU takes
# 64 MiB per call), heads/ and minilm_shapes.json: the backbone gets random weights of its shapes
# (benchmarks/shape_only.py), which cost the same forward as the real ones.
set -u
OUT=${1:?OUT}; MACHINE=${2:-h100}; TB=${3:?TEXTBENCH}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'
} > "$OUT/machine.txt" 2>&1
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_clip_fast.py \
  tests/test_clip_evaluate.py tests/test_perf_semantics.py > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" >> "$OUT/gpu_tests.log"; tail -3 "$OUT/gpu_tests.log"
python3 benchmarks/shape_only.py materialise "$TB/minilm_shapes.json" \
  "$TB/fetch/models/minilm/model.safetensors"
timeout 120 python3 benchmarks/bench_text_eval.py --device cuda --machine "$MACHINE" \
  --fetch "$TB/fetch" --heads "$TB/heads" --repeat 5 --out "$OUT" > "$OUT/bench.log" 2>&1
echo "text rc=$?" | tee -a "$OUT/bench.log"
timeout 150 python3 benchmarks/bench_llm_eval.py --device cuda --machine "$MACHINE" \
  --batch_sizes 64 128 256 --out "$OUT" >> "$OUT/bench.log" 2>&1
echo "llm rc=$?" | tee -a "$OUT/bench.log"
if [ "${MERGE:-1}" = 1 ]; then
  timeout 150 python3 benchmarks/bench_merge.py run --device cuda --machine "$MACHINE-$(date +%F)" \
    --configs ViT-B-32:8 --impls ours ours-nohash ours-resident baseline --timeout 100 \
    >> "$OUT/bench.log" 2>&1
  echo "merge rc=$?" | tee -a "$OUT/bench.log"
  cp "benchmarks/results/merge-$MACHINE-$(date +%F).json" "$OUT/" 2>/dev/null
  timeout 60 python3 benchmarks/profile_merge.py --device cuda --method ta --top 25 \
    > "$OUT/profile_ta.txt" 2>&1
fi
grep -v -i warn "$OUT/bench.log" | tail -30
