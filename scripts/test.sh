#!/usr/bin/env bash
# One command: set up, then run the whole test suite (real Redis, tiny model, fake platforms).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
