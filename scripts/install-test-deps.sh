#!/usr/bin/env bash
# Install the Debian packages the tests need: a PostgreSQL server (the tests start a private
# cluster with its initdb/pg_ctl), Chromium (headless screenshots of the dashboard) and
# docker-compose (validates docker-compose.yml).
# Idempotent and quiet: what is already there is skipped, and when nothing is missing nothing
# is fetched and nothing is printed.
set -euo pipefail

missing=()
# Any PostgreSQL server version does: tests/pg.py finds /usr/lib/postgresql/*/bin or pg_ctl on PATH.
if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && ! command -v pg_ctl >/dev/null; then
    missing+=(postgresql)
fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    missing+=(chromium)
fi
# `docker-compose config` validates docker-compose.yml without a Docker engine (tests/test_compose.py).
if ! command -v docker-compose >/dev/null; then
    missing+=(docker-compose)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-test-deps: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0
     -o DPkg::Lock::Timeout=300)
# apt and the packages' install scripts chatter on stderr too (debconf, invoke-rc.d): keep it all in
# a log and show it only when something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${apt[@]}" update && "${apt[@]}" install -y "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install-test-deps: installing ${missing[*]} failed (apt output above)" >&2
    exit 1
fi
echo "install-test-deps: installed ${missing[*]}"
