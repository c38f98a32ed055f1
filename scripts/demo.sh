#!/usr/bin/env bash
# Set everything up and run the main job: a real search on the embedded MNIST-5k data with the
# default space (about 5 minutes on 2 CPU cores), then print the best configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cnnsearch run --study "${STUDY:-demo}" --dataset mnist5k --space default --timeout "${TIMEOUT:-260}" "$@"
