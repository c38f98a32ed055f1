#!/usr/bin/env bash
# Set everything up (venv, Python and Debian packages) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q "$@"
