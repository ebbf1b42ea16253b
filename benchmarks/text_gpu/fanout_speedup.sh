#!/usr/bin/env bash
# Speed-up of the per-task fine-tuning fan-out over the GPUs of one host (issue 15): the same
# unit's fine-tuning stages (one process each, as a Prefect worker per GPU would run them) first
# all on GPU 0, then spread round-robin over 2, …, NGPU GPUs (CUDA_VISIBLE_DEVICES); wall time of
# each, outputs removed in between so every round recomputes. Prints and writes JSON.
#   bash benchmarks/text_gpu/fanout_speedup.sh PROFILE WORKDIR [UNIT] [OUT_JSON]
set -u
P=${1:-profiles/text-gpu-methods.yaml}
W=${2:-runs/fanout}
PY=${PYTHON:-python3}
U=${3:-$($PY scripts/run_profile.py "$P" --workdir "$W" --list-units | head -1)}
OUT=${4:-$W/fanout_speedup.json}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$NGPU" -ge 1 ] || { echo "no GPU"; exit 1; }
mkdir -p "$W/logs"
[ -f "$W/shared/out/heads/heads.json" ] || $PY scripts/run_profile.py "$P" --workdir "$W" --shared \
  > "$W/logs/shared.log" 2>&1 || { echo "shared stages failed"; exit 1; }
mapfile -t FT < <($PY scripts/run_profile.py "$P" --workdir "$W" --list-stages | grep '^finetune')
rows=""
for G in $(seq 1 "$NGPU"); do
  rm -rf "$W/${U%/*}/${U#*/}/out/finetune" "$W/${U%/*}/${U#*/}/out/finetune_seeds"
  t0=$EPOCHREALTIME
  i=0
  for s in "${FT[@]}"; do
    CUDA_VISIBLE_DEVICES=$((i % G)) OMP_NUM_THREADS=2 $PY scripts/run_profile.py "$P" \
      --workdir "$W" --unit "$U" --stages "$s" > "$W/logs/g$G-$s.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  t=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }")
  echo "$G GPU(s): ${#FT[@]} fine-tuning processes in $t s"
  rows="$rows${rows:+, }{\"gpus\": $G, \"wall_s\": $t}"
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "{\"profile\": \"$P\", \"unit\": \"$U\", \"processes\": ${#FT[@]}, \"gpu\": \"$gpu\", \"rounds\": [$rows]}" | tee "$OUT"
