#!/usr/bin/env bash
# The local orchestration stack: Prefect server + worker(s) on a process work pool, and the MLflow
# tracking server, all bound to 127.0.0.1, telemetry off (docs/orchestration.md).
#
#   scripts/stack.sh start     # servers, pool "lines", `prefect deploy --all`, worker(s)
#   scripts/stack.sh gpu-workers N   # (re)start the unit workers: one per GPU 0..N-1
#   scripts/stack.sh status    # what runs, where
#   scripts/stack.sh env       # the exports a shell needs to talk to the stack (eval "$(…)")
#   scripts/stack.sh stop      # stops every process group it started; nothing is left behind
#
# Knobs (environment): LINES_PREFECT_PORT (4200), LINES_MLFLOW_PORT (5000), LINES_WORKERS (1),
# LINES_POOL (lines), LINES_PYTHON (.venv/bin/python, else python3).
# GPU runners: LINES_GPU_WORKERS=N starts, instead of LINES_WORKERS general workers, one worker for
# the experiment flows (queue "default") and N unit workers (queue "units", one flow run at a time
# each), worker i seeing only GPU i (CUDA_VISIBLE_DEVICES=i): fanned-out fine-tuning and sweep
# units spread over the host's GPUs, one per GPU, each with nproc/N CPU threads
# (LINES_UNIT_THREADS overrides). LINES_MLFLOW=store records into the SQLite store
# mlflow/mlflow.db directly, with no tracking server (a host with only the MLflow client,
# mlflow-skinny); `mlflow ui --backend-store-uri sqlite:///…/mlflow.db` browses it anywhere.
# State: .stack/ (pids, logs, the Prefect database) and mlflow/ (mlflow.db + artifacts/), both
# self-ignored by git. Each process is started with setsid in its own process group, and `stop`
# terminates whole groups: `mlflow server` starts worker processes that outlive a killed parent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.stack"
PY="${LINES_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
PREFECT_PORT="${LINES_PREFECT_PORT:-4200}"
MLFLOW_PORT="${LINES_MLFLOW_PORT:-5000}"
WORKERS="${LINES_WORKERS:-1}"
GPU_WORKERS="${LINES_GPU_WORKERS:-}"
POOL="${LINES_POOL:-lines}"
MLFLOW_MODE="${LINES_MLFLOW:-server}"
MLFLOW_DIR="$ROOT/mlflow"

export PREFECT_HOME="$STATE/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
export PREFECT_WORKER_QUERY_SECONDS=2
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export DO_NOT_TRACK=true
export MLFLOW_DISABLE_TELEMETRY=true
if [[ "$MLFLOW_MODE" == store ]]; then
  export MLFLOW_TRACKING_URI="sqlite:///$MLFLOW_DIR/mlflow.db"
else
  export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export DVC_NO_ANALYTICS=1
export HF_HUB_OFFLINE=1
export PATH="$(dirname "$PY"):$PATH"   # the worker's flows and their tools use this interpreter

log() { printf '[stack] %s\n' "$*" >&2; }

self_ignored_dir() {  # a state folder git never sees, without touching .gitignore
  mkdir -p "$1"
  [[ -f "$1/.gitignore" ]] || printf '*\n' > "$1/.gitignore"
}

wait_http() {  # URL SECONDS NAME PIDFILE
  "$PY" - "$1" "$2" "$3" "$STATE/$4.pid" <<'EOF'
import os, sys, time, urllib.request
url, limit, name, pidfile = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
t0 = time.time()
while time.time() - t0 < limit:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                print(f"[stack] {name} healthy after {time.time() - t0:.1f}s", file=sys.stderr)
                sys.exit(0)
    except Exception:
        pass
    pid = int(open(pidfile).read())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"[stack] {name} exited during start-up; see its log in .stack/logs/")
    time.sleep(0.5)
sys.exit(f"[stack] {name} not healthy after {limit:.0f}s ({url}); see .stack/logs/")
EOF
}

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

spawn() {  # NAME CMD...: its own session and process group (pgid == pid), logs in .stack/logs
  local name="$1"; shift
  if alive "$name"; then log "$name already running (pid $(cat "$STATE/$name.pid"))"; return; fi
  LINES_STACK="$ROOT" setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
  log "$name started (pid/pgid $!)"
}

port_free() {
  "$PY" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind(('127.0.0.1', int(sys.argv[1])))
except OSError: sys.exit(1)" "$1"
}

cmd_env() {
  cat <<EOF
export PREFECT_API_URL=$PREFECT_API_URL
export PREFECT_HOME=$PREFECT_HOME
export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
export DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
EOF
}

cmd_start() {
  self_ignored_dir "$STATE"; self_ignored_dir "$MLFLOW_DIR"
  mkdir -p "$STATE/logs" "$PREFECT_HOME" "$MLFLOW_DIR/artifacts"
  cmd_env >"$STATE/env"
  cd "$ROOT"
  "$PY" -m dvc config core.analytics false

  if ! alive prefect-server; then
    port_free "$PREFECT_PORT" || { log "port $PREFECT_PORT is taken (set LINES_PREFECT_PORT)"; exit 1; }
    spawn prefect-server "$PY" -m prefect server start --host 127.0.0.1 --port "$PREFECT_PORT"
  fi
  if [[ "$MLFLOW_MODE" != store ]] && ! alive mlflow-server; then
    port_free "$MLFLOW_PORT" || { log "port $MLFLOW_PORT is taken (set LINES_MLFLOW_PORT)"; exit 1; }
    spawn mlflow-server "$PY" -m mlflow server \
      --backend-store-uri "sqlite:///$MLFLOW_DIR/mlflow.db" \
      --artifacts-destination "$MLFLOW_DIR/artifacts" \
      --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
  fi
  wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" 180 "Prefect server" prefect-server
  [[ "$MLFLOW_MODE" == store ]] || wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 120 "MLflow server" mlflow-server

  if ! "$PY" -m prefect work-pool inspect "$POOL" >/dev/null 2>&1; then
    "$PY" -m prefect work-pool create "$POOL" --type process >/dev/null
    log "work pool '$POOL' (process) created"
  fi
  "$PY" -m prefect --no-prompt deploy --all >"$STATE/logs/deploy.log" 2>&1 \
    || { log "prefect deploy failed:"; tail -30 "$STATE/logs/deploy.log" >&2; exit 1; }
  log "deployments: $(grep -c "Deployment '.*' successfully created" "$STATE/logs/deploy.log" || true) created (log: .stack/logs/deploy.log)"

  if [[ -n "$GPU_WORKERS" ]]; then
    spawn worker-experiments "$PY" -m prefect worker start --pool "$POOL" --work-queue default \
      --name lines-experiments --type process
    cmd_gpu_workers "$GPU_WORKERS"
  else
    for i in $(seq 1 "$WORKERS"); do
      spawn "worker-$i" "$PY" -m prefect worker start --pool "$POOL" --name "lines-worker-$i" --type process
    done
  fi
  cmd_status
  log "ready. In another shell: eval \"\$(scripts/stack.sh env)\"; then e.g."
  log "  prefect deployment run 'merging-benchmark/smoke' --watch"
}

cmd_gpu_workers() {  # N: stop the unit workers, start N (worker i: GPU i, one run at a time)
  local n="$1" f i threads
  # Each unit's CPU work (data, checkpoint I/O, CPU-side merges) gets its share of the cores: on
  # 4 × H200 / 64 cores, four units with 64 threads each ran 14–29% slower than one alone.
  threads="${LINES_UNIT_THREADS:-$(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))}"
  # Already exactly N live unit workers (`start` just made them): keep them.
  local have=0
  for f in "$STATE"/gpu-worker-*.pid; do [[ -e "$f" ]] && alive "$(basename "$f" .pid)" && have=$((have + 1)); done
  if [[ "$have" -eq "$n" ]] && alive "gpu-worker-$((n - 1))"; then
    log "$n unit workers already running"; return 0
  fi
  for f in "$STATE"/gpu-worker-*.pid; do [[ -e "$f" ]] && stop_group "$(basename "$f" .pid)" INT 5; done
  for i in $(seq 0 $((n - 1))); do
    CUDA_VISIBLE_DEVICES=$i OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
      spawn "gpu-worker-$i" "$PY" -m prefect worker start --pool "$POOL" \
      --work-queue units --limit 1 --name "lines-gpu-$i" --type process
  done
  wait_workers "$n"
}

wait_workers() {  # N: until N unit workers are online (they poll every PREFECT_WORKER_QUERY_SECONDS)
  "$PY" - "$POOL" "$1" <<'EOF'
import sys, time
from prefect.client.orchestration import get_client
pool, n = sys.argv[1], int(sys.argv[2])
t0 = time.time()
with get_client(sync_client=True) as c:
    while time.time() - t0 < 120:
        live = [w.name for w in c.read_workers_for_work_pool(pool)
                if w.name.startswith("lines-gpu-") and str(w.status).endswith("ONLINE")]
        if len(live) >= n:
            print(f"[stack] unit workers online: {sorted(live)}", file=sys.stderr)
            sys.exit(0)
        time.sleep(1)
sys.exit(f"[stack] fewer than {n} unit workers online after 120 s")
EOF
}

stop_group() {  # NAME SIGNAL SECONDS: signal the process group, KILL what is left after SECONDS
  local name="$1" sig="$2" secs="$3" pidfile="$STATE/$1.pid" pgid
  [[ -f "$pidfile" ]] || return 0
  pgid="$(cat "$pidfile")"
  if kill -0 -- "-$pgid" 2>/dev/null; then
    kill "-$sig" -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 2))); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 -- "-$pgid" 2>/dev/null; then
      log "$name: group $pgid still alive ${secs} s after SIG$sig; KILL"
      kill -KILL -- "-$pgid" 2>/dev/null || true
      sleep 0.5
    fi
    log "$name stopped (group $pgid)"
  fi
  rm -f "$pidfile"
}

stack_processes() {  # pid and command of every live process with LINES_STACK=<this root>
  "$PY" - "$ROOT" <<'EOF'
import os, sys
mark = ("LINES_STACK=" + sys.argv[1]).encode()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if mark in env:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            print(pid, cmd[:200])
    except OSError:
        pass
EOF
}

cmd_stop() {
  [[ -d "$STATE" ]] || { log "nothing to stop"; return 0; }
  local f
  # A Prefect worker stops polling on SIGINT and then waits for its flow runs (which share its
  # process group, so they get the signal too); what is left after 5 s is killed.
  for f in "$STATE"/worker-*.pid "$STATE"/gpu-worker-*.pid; do
    [[ -e "$f" ]] && stop_group "$(basename "$f" .pid)" INT 5
  done
  stop_group mlflow-server TERM 15  # none in LINES_MLFLOW=store mode
  stop_group prefect-server TERM 15
  # Every process spawned here, and every flow run of its workers, carries LINES_STACK=<root>
  # in its environment: none may be left.
  local left
  left="$(stack_processes)"
  if [[ -n "$left" ]]; then log "still running:"; echo "$left" >&2; return 1; fi
  log "stopped; no stack process left"
}

cmd_status() {
  local n
  for f in "$STATE"/*.pid; do
    [[ -e "$f" ]] || continue
    n="$(basename "$f" .pid)"
    if alive "$n"; then echo "$n: running (pgid $(cat "$f"))"; else echo "$n: dead (stale pid file)"; fi
  done
  echo "Prefect UI/API: http://127.0.0.1:$PREFECT_PORT  (PREFECT_API_URL=$PREFECT_API_URL)"
  if [[ "$MLFLOW_MODE" == store ]]; then
    echo "MLflow store:   $MLFLOW_TRACKING_URI  (no server; mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI)"
  else
    echo "MLflow UI:      $MLFLOW_TRACKING_URI  (store sqlite:///$MLFLOW_DIR/mlflow.db)"
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  gpu-workers) cmd_gpu_workers "${2:?usage: $0 gpu-workers N}" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 start|gpu-workers N|stop|status|env" >&2; exit 2 ;;
esac
