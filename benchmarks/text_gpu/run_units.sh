#!/usr/bin/env bash
# The runs block of a profile (fine-tuning budgets × seeds, issue 11) on one host with any number
# of GPUs: the shared stages once, then every unit as its own process, PER_GPU processes per GPU
# (MiniLM-sized models leave a GPU mostly idle: one process is launch-bound, so several per GPU
# multiply the throughput), then the aggregate. Each unit is `scripts/run_profile.py --unit`, the
# same command a Prefect worker or a second host would run.
#   bash benchmarks/text_gpu/run_units.sh PROFILE WORKDIR [PER_GPU]
set -u
P=${1:-profiles/text-gpu.yaml}
W=${2:-runs/text-gpu}
PER=${3:-1}
PY=${PYTHON:-python3}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NGPU" -ge 1 ] || { echo "no GPU"; exit 1; }
mkdir -p "$W/logs"
start=$(date +%s)
$PY scripts/run_profile.py "$P" --workdir "$W" --shared > "$W/logs/shared.log" 2>&1 \
  || { echo "shared stages failed"; tail -20 "$W/logs/shared.log"; exit 1; }
echo "shared done in $(($(date +%s) - start)) s"
mapfile -t UNITS < <($PY scripts/run_profile.py "$P" --workdir "$W" --list-units)
SLOTS=$((NGPU * PER))
THREADS=$(( $(nproc) / SLOTS )); [ "$THREADS" -ge 1 ] || THREADS=1
for ((k = 0; k < SLOTS; k++)); do
  (
    for ((i = k; i < ${#UNITS[@]}; i += SLOTS)); do
      u=${UNITS[$i]}
      t0=$(date +%s)
      CUDA_VISIBLE_DEVICES=$((k % NGPU)) OMP_NUM_THREADS=$THREADS \
        $PY scripts/run_profile.py "$P" --workdir "$W" --unit "$u" > "$W/logs/unit-${u//\//-}.log" 2>&1
      echo "$u gpu=$((k % NGPU)) rc=$? $(($(date +%s) - t0)) s" >> "$W/logs/units.txt"
    done
  ) &
done
wait
$PY scripts/run_profile.py "$P" --workdir "$W" --aggregate > "$W/logs/aggregate.log" 2>&1
echo "all done in $(($(date +%s) - start)) s on $NGPU GPU(s), $PER process(es) per GPU"
cat "$W/logs/units.txt"
