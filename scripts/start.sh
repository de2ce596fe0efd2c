#!/usr/bin/env bash
# One command: set up, then run everything (embedded Redis, worker, configured adapters).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/kullm serve "$@"
