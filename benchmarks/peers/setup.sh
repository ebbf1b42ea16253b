#!/usr/bin/env bash
# Peers for side-by-side checks, each in its own virtual environment (never a dependency of this
# project): fusion-bench 0.2.33 and mergekit 0.1.5 with the same CPU torch as the project.
#   bash benchmarks/peers/setup.sh [fusionbench|mergekit|all]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
want=${1:-all}
make_env() {  # name, packages...
    local name=$1; shift
    [ -x ".venv-$name/bin/python" ] || "$PY" -m venv ".venv-$name"
    ".venv-$name/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
    # torch first, exactly pinned (the preinstalled CPU wheel; a looser pin pulls CUDA)
    ".venv-$name/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING' || true
    ".venv-$name/bin/python" -m pip install -q "torch==2.13.0" "$@" 2>&1 | grep -v '^WARNING' || true
}
if [ "$want" = fusionbench ] || [ "$want" = all ]; then make_env fusionbench "fusion-bench==0.2.33"; fi
if [ "$want" = mergekit ] || [ "$want" = all ]; then make_env mergekit "mergekit==0.1.5"; fi
