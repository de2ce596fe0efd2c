#!/usr/bin/env bash
# One command: set up (once), then run everything (embedded Redis, worker, configured adapters).
# Ctrl-C stops it cleanly: replies in flight finish or are handed back, Redis stops last.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh all
exec .venv/bin/kullm serve "$@"
