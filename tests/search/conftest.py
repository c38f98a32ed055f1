"""Fixtures of the search tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import PgCluster
from tests.support.workers import Workers


@pytest.fixture
def workers(pg_cluster: PgCluster, tmp_path: Path) -> Iterator[Workers]:
    """`cnnsearch worker` subprocesses on the session's PostgreSQL server; killed at the end if still running."""
    started = Workers(pg_cluster, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
