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
# find_spec, not import: importing torch takes seconds, and this check runs on every demo and test run.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('torchvision')))"; then
    # shellcheck disable=SC2086
    .venv/bin/pip install -q $TORCH_SPEC
fi
extras=""
if [ "${1:-}" = "--test" ]; then
    extras="[test]"
    bash scripts/install-test-deps.sh
fi
# The package is installed in editable mode, so code changes need no reinstall: pip runs again only
# when pyproject.toml changed since the last install (a stamp in .venv holds its hash). This keeps a
# second `demo.sh` or `test.sh` from spending ~13 s on a pip run that changes nothing.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
stamp=.venv/.cnnsearch-installed${extras:+-test}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && [ "$(cat .venv/.cnnsearch-installed-test 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install -q -e ".${extras}"
    echo "$want" > "$stamp"
fi
