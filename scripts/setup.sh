#!/usr/bin/env bash
# Create .venv and install kullm-chat with everything (torch first: a CPU build pin, so pip
# never pulls a multi-GB CUDA build by accident; on a GPU machine install your CUDA torch first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
