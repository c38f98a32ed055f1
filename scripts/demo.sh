#!/usr/bin/env bash
# Set everything up and run the main job: a real search on the embedded MNIST-5k data with the
# default space (under 5 minutes on 2 CPU cores), then print the best configuration.
# --timeout stops starting trials; the one running then finishes (up to ~35 s with this space on
# 2 CPU cores), so 240 s of starting trials ends the search inside 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cnnsearch run --study "${STUDY:-demo}" --dataset mnist5k --space default --timeout "${TIMEOUT:-240}" "$@"
