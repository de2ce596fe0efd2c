#!/usr/bin/env bash
# The GPU check in one command, from the repository root, on the GPU image as it is:
#   bash bench/gpu_check.sh              # CUDA: SOLAR-10.7B-shaped random model, < 5 minutes
#   bash bench/gpu_check.sh --dry-run    # CPU: 2 small layers, < 2 minutes
# Needs a python3 with torch and transformers (PYTHON=... to pick another). Nothing is
# installed or downloaded: the engine modules it imports need neither pydantic nor the project
# installed (kullm_core is taken from this checkout). The table goes to stdout and, when $OUT is
# set, to $OUT/gpu_check.md and $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
limit=300                                  # the script's own watchdog stops it first (270 s)
for arg in "$@"; do [[ "$arg" == --dry-run ]] && limit=115; done
if ! "$py" -c 'import torch, transformers' 2>/dev/null; then
    echo "gpu_check: $py lacks torch or transformers (set PYTHON=...)" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
exec timeout -k 10 "$limit" "$py" bench/gpu_check.py "$@"
