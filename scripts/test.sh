#!/usr/bin/env bash
# One command: set up (with the test tools), then run the whole test suite (real Redis, tiny
# model, fake platforms).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"
