"""Fixtures shared by all test packages."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pg import PgCluster, find_pg_bindir


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server for the whole test session, removed at the end.

    Without PostgreSQL binaries the tests using it are skipped on a developer machine but fail in
    CI (``CI=true``), so CI cannot pass by skipping them. Mark such tests ``@pytest.mark.postgres``.
    """
    bindir = find_pg_bindir()
    if bindir is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, in $PG_BINDIR or "
            "/usr/lib/postgresql/*/bin; run scripts/install-test-deps.sh"
        )
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    cluster = PgCluster(bindir)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PgCluster) -> str:
    """``postgresql+psycopg://cnn:PASSWORD@127.0.0.1:PORT/cnnsearch`` of the session's server."""
    return pg_cluster.url
