#!/usr/bin/env bash
# Set up cnnsearch in ./.venv: Python packages, and with --test the system packages the tests use
# (PostgreSQL, Chromium). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch/torchvision are pinned to the releases that lie on this kind of machine's disk; elsewhere set
# TORCH_SPEC (e.g. TORCH_SPEC="torch torchvision") to take what your platform has.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    # shellcheck disable=SC2086
    .venv/bin/pip install -q $TORCH_SPEC
fi
extras=""
if [ "${1:-}" = "--test" ]; then
    extras="[test]"
    bash scripts/install-test-deps.sh
fi
.venv/bin/pip install -q -e ".${extras}"
