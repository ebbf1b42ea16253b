#!/usr/bin/env bash
# The main job: the embedded default experiment (text suite: all-MiniLM-L6-v2 on 8 text tasks,
# all shipped inside packages) through DVC, offline, on CPU.
# Arguments go to `dvc repro` (e.g. `scripts/run.sh merge` reruns up to the merge stage).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true
[ -e .git ] || git init -q  # -e: in a git worktree .git is a file
dvc config core.analytics false
python -m flows.profile --check  # params.yaml validated up front: one line naming a wrong key
start=$(date +%s)
dvc repro "$@"
echo
echo "done in $(( $(date +%s) - start )) s; report: out/report/report.md, metrics: out/report/metrics.json"
sed -n '/^## Multi-task merging/,/^## Single-task editing/p' out/report/report.md | head -30
