#!/usr/bin/env bash
# Issue 15 on a GPU host: the orchestrated stack (Prefect server + process work pool, MLflow into
# a SQLite store with the client only, DVC) runs the LLM suite's GPU deployment through
# `prefect deployment run 'llm-benchmark/smollm2' --param fan_out=true --watch`, once per pool
# size in CONFIGS (1 2 4: unit workers on GPUs 0..G-1, one unit at a time each, `scripts/stack.sh
# gpu-workers G`), each in a fresh git + DVC workspace so nothing is restored from a cache.
# Fanned out: the per-task fine-tuning (4 units) and then the merge sweep (one unit per method);
# each phase's wall time is in the MLflow run (fan_out.phase<i>.wall_s) and in OUT/summary.json.
#
#   STASH=DIR bash benchmarks/gpu_stack/run.sh OUT [CONFIGS]   (GPU machine; DIR: the wheels of
#     benchmarks/gpu_stack/wheels.py plus what benchmarks/llm_gpu/setup.sh installs)
#   METHODS='["ties", …]' GRID='[0.8, 1.6]' TGRID=… MAX_VAL=100 MAX_TEST=200 …   (a smaller sweep)
#   DEPLOYMENT=llm-benchmark/smoke PARAMS='{}' STAGES='["finetune","merge"]' \
#     bash benchmarks/gpu_stack/run.sh /tmp/out "1 2"     (the same on CPU with the smoke profile)
set -u
OUT=$(mkdir -p "$1" && cd "$1" && pwd); CONFIGS=${2:-"1 4 2"}
ROOT=$PWD
DEPLOYMENT=${DEPLOYMENT:-llm-benchmark/smollm2}
STAGES=${STAGES:-'["finetune", "merge"]'}
METHODS=${METHODS:-'["task_arithmetic", "tsv_m", "iso_c", "iso_cts", "cart", "wudi", "breadcrumbs", "della"]'}
if [ -n "${STASH:-}" ]; then  # no registry: the LLM suite's setup installs every carried wheel
  DATA=$OUT/data; . benchmarks/llm_gpu/setup.sh || exit 1
  python3 -c "import prefect, dvc, mlflow; print('stack: prefect', prefect.__version__, '| dvc', dvc.__version__, '| mlflow', mlflow.__version__)" || exit 1
fi
GRID=${GRID:-'[0.4, 0.8, 1.2, 2.0]'}; TGRID=${TGRID:-'[0.6, 1.2, 2.0, 3.0]'}
MAX_VAL=${MAX_VAL:-200}; MAX_TEST=${MAX_TEST:-400}
PARAMS=${PARAMS:-"{\"common.max_val\": $MAX_VAL, \"common.max_test\": $MAX_TEST, \"merge.ties_lambdas\": $TGRID, \"merge.ties_betas\": $TGRID}"}
export LINES_MLFLOW=store LINES_GPU_WORKERS=${CONFIGS%% *} LINES_PYTHON=${LINES_PYTHON:-$(command -v python3)}
export PREFECT_WORKER_QUERY_SECONDS=1
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpus.txt" 2>/dev/null || echo cpu > "$OUT/gpus.txt"
bash scripts/stack.sh start > "$OUT/logs/stack.log" 2>&1 || { tail -30 "$OUT/logs/stack.log"; exit 1; }
eval "$(bash scripts/stack.sh env)"
export PATH="$(dirname "$LINES_PYTHON"):$PATH"
echo "[gpu_stack] stack up: $(grep -c successfully "$ROOT/.stack/logs/deploy.log") deployments; MLflow $MLFLOW_TRACKING_URI"
for G in $CONFIGS; do
  bash scripts/stack.sh gpu-workers "$G" >> "$OUT/logs/stack.log" 2>&1 || { echo "workers failed"; tail "$OUT/logs/stack.log"; break; }
  WS=/tmp/lines-ws-g$G; rm -rf "$WS"
  PYTHONPATH=$ROOT/tests:${PYTHONPATH:-} "$LINES_PYTHON" -c "import sys; from pathlib import Path
from pipeline_workspace import make_pipeline_workspace as m
m(Path(sys.argv[1]), ('llm/dvc.yaml', 'llm/params.yaml', 'llm/profiles', 'lines'), 'llm workspace')" "$WS" || break
  if [ -n "${DATA:-}" ]; then  # no dataset packages here: the stages read the carried splits
    "$LINES_PYTHON" -c "import sys, yaml; p = sys.argv[1]; d = yaml.safe_load(open(p))
d['common']['data'] = sys.argv[2]; yaml.safe_dump(d, open(p, 'w'), sort_keys=False)" "$WS/llm/params.yaml" "$DATA"
    (cd "$WS" && git commit -qam "this host's data folder")
  fi
  t0=$EPOCHREALTIME
  "$LINES_PYTHON" -m prefect deployment run "$DEPLOYMENT" --watch --param fan_out=true --param "workspace=$WS" \
    --param "name=gpus$G" --param "stages=$STAGES" --param "methods=$METHODS" \
    --param "lambdas=$GRID" --param "betas=$GRID" --param "params=$PARAMS" > "$OUT/logs/flow_g$G.log" 2>&1
  rc=$?
  t=$(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }")
  echo "[gpu_stack] $G GPU(s): flow run rc=$rc in $t s"
  echo "{\"gpus\": $G, \"rc\": $rc, \"flow_wall_s\": $t}" > "$OUT/flow_g$G.json"
  (cd "$WS" && "$LINES_PYTHON" -m dvc exp show --no-pager --md > "$OUT/dvc_exp_show_g$G.md" 2>&1)
  cp "$WS"/.dvc/tmp/lines-units/gpus$G.json "$OUT/units_g$G.json" 2>/dev/null
  mkdir -p "$OUT/ws_g$G" && cp -r "$WS/llm/out/merge" "$WS/llm/out/eval" "$OUT/ws_g$G/" 2>/dev/null
  cp "$WS/llm/params.yaml" "$WS/llm/dvc.lock" "$OUT/ws_g$G/" 2>/dev/null
done
# The merging report (every method ± LiNeS, 95% paired-bootstrap intervals; no edit stage ran)
# from the first pool size's workspace: the fan-out changes where units run, not what they compute.
for G in $CONFIGS; do
  WS=/tmp/lines-ws-g$G
  [ -f "$WS/llm/out/merge/merge.json" ] || continue
  (cd "$WS/llm" && "$LINES_PYTHON" -m lines.llm.stages report --base ckpt/base \
    --base_eval out/eval/base.json --edit none --merge out/merge --out "$OUT/report" \
    > "$OUT/logs/report.log" 2>&1) && echo "[gpu_stack] report from the $G-GPU run: $OUT/report"
  break
done
"$LINES_PYTHON" benchmarks/gpu_stack/summarise.py "$OUT" "$MLFLOW_TRACKING_URI" || true
bash scripts/stack.sh stop >> "$OUT/logs/stack.log" 2>&1
echo "[gpu_stack] done"
