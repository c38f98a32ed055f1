#!/usr/bin/env bash
# Set everything up and run the main job: a real search on the embedded MNIST-5k data in the space
# derived from the data and the budget (no --space: `run` prints what it derived and why), then print
# the best configuration. --timeout stops starting trials; the one running then finishes (a
# typical network drawn from the space, at the top of the derived epoch range, takes an eighth of
# the budget).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cnnsearch run --study "${STUDY:-demo}" --dataset mnist5k --timeout "${TIMEOUT:-240}" "$@"
