#!/usr/bin/env bash
# The runs block of a profile (fine-tuning budgets × seeds, issue 11) on one host with any number
# of GPUs: the shared stages once, then every unit as its own process, PER_GPU processes per GPU
# (MiniLM-sized models leave a GPU mostly idle: one process is launch-bound, so several per GPU
# multiply the throughput), then the aggregate. Each unit is `scripts/run_profile.py --unit`, the
# same command a Prefect worker or a second host would run.
# With --stage-parallel (one unit per GPU slot) a unit's independent stages also run as parallel
# processes on its GPU, in the pipeline's dependency order: every fine-tuning, then base_eval, then
# every experiment stage (edit, merge, soups, wiseft, fig1, learned, schedules), then the report.
#   bash benchmarks/text_gpu/run_units.sh PROFILE WORKDIR [PER_GPU] [--stage-parallel]
set -u
P=${1:-profiles/text-gpu.yaml}
W=${2:-runs/text-gpu}
PER=${3:-1}
SPAR=${4:-}
PY=${PYTHON:-python3}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}  # NGPU=1 with device cpu: a dry run
[ "$NGPU" -ge 1 ] || { echo "no GPU"; exit 1; }
mkdir -p "$W/logs"
start=$(date +%s)
$PY scripts/run_profile.py "$P" --workdir "$W" --shared > "$W/logs/shared.log" 2>&1 \
  || { echo "shared stages failed"; tail -20 "$W/logs/shared.log"; exit 1; }
echo "shared done in $(($(date +%s) - start)) s"
mapfile -t UNITS < <($PY scripts/run_profile.py "$P" --workdir "$W" --list-units)
SLOTS=$((NGPU * PER))
THREADS=$(( $(nproc) / SLOTS )); [ "$THREADS" -ge 1 ] || THREADS=1
mapfile -t STAGES < <($PY scripts/run_profile.py "$P" --workdir "$W" --list-stages)
# One stage of unit $1 on GPU $2 (its own process and log); its time and exit status go to units.txt.
stage() {
  local u=$1 g=$2 s=$3 t0 rc
  t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$g OMP_NUM_THREADS=$SPT $PY scripts/run_profile.py "$P" --workdir "$W" \
    --unit "$u" --stages "$s" > "$W/logs/unit-${u//\//-}-$s.log" 2>&1
  rc=$?
  echo "$u:$s gpu=$g rc=$rc $(($(date +%s) - t0)) s" >> "$W/logs/units.txt"
  return $rc
}
# Stage groups of the pipeline's dependency order; the stages of a group run at once.
group() {
  local u=$1 g=$2 pat=$3 s
  for s in "${STAGES[@]}"; do
    [[ $s =~ $pat ]] && stage "$u" "$g" "$s" &
  done
  wait
}
for ((k = 0; k < SLOTS; k++)); do
  (
    for ((i = k; i < ${#UNITS[@]}; i += SLOTS)); do
      u=${UNITS[$i]}
      g=$((k % NGPU))
      t0=$(date +%s)
      if [ "$SPAR" = "--stage-parallel" ]; then
        SPT=2
        group "$u" $g '^finetune'
        stage "$u" $g base_eval \
          && group "$u" $g '^(edit|merge|soups|wiseft|fig1|learned|schedules)$' \
          && stage "$u" $g report
      else
        CUDA_VISIBLE_DEVICES=$g OMP_NUM_THREADS=$THREADS \
          $PY scripts/run_profile.py "$P" --workdir "$W" --unit "$u" > "$W/logs/unit-${u//\//-}.log" 2>&1
      fi
      echo "$u gpu=$g rc=$? $(($(date +%s) - t0)) s" >> "$W/logs/units.txt"
    done
  ) &
done
wait
$PY scripts/run_profile.py "$P" --workdir "$W" --aggregate > "$W/logs/aggregate.log" 2>&1
echo "all done in $(($(date +%s) - start)) s on $NGPU GPU(s), $PER process(es) per GPU"
cat "$W/logs/units.txt"
