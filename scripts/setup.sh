#!/usr/bin/env bash
# Create .venv and install kullm-chat: `scripts/setup.sh [all|dev]` (default all: what
# `kullm serve` needs; dev adds the test tools). torch goes first: `torch==2.13.0` is a CPU build
# where a local CPU wheel exists (this project's machines); elsewhere set TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) or install the CUDA build into .venv before this script:
# an installed torch is kept. Nothing is reinstalled while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-all}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.kullm-setup
key="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && { grep -qx "$key $want" "$stamp" || grep -qx "$key dev" "$stamp"; }; then
  exit 0
fi
. .venv/bin/activate
log=.venv/setup.log
pip_q() {  # quiet unless it fails: then the whole pip output
  python -m pip install -q "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}
echo "setting up .venv (kullm-chat[$want]; once, or after pyproject.toml changes)..." >&2
pip_q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  pip_q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
pip_q -e ".[$want]"
echo "$key $want" > "$stamp"
