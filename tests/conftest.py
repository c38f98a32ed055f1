"""Fixtures shared by all test packages (their helpers live in ``tests/support/``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ci import missing
from tests.support.pg import PgCluster, find_pg_bindir
from tests.support.studies import copy_study, run_tiny_study

SERVER_FIXTURES = frozenset({"pg_cluster", "pg_url", "workers", "ray_cluster"})
"""Fixtures that start a server (PostgreSQL, worker processes, a Ray cluster): their tests are slow."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that starts a server or a browser, besides those marked by hand.

    Tests that train for more than a second or two are marked ``@pytest.mark.slow`` where they
    are written; ``pytest -m "not slow"`` is then the fast loop while editing.
    """
    for item in items:
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_server or item.get_closest_marker("browser") or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Decoded datasets go to a folder of the test session (inherited by the processes it starts), not ~/.cache."""
    saved = os.environ.get("CNNSEARCH_CACHE_DIR")
    os.environ["CNNSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnnsearch-cache"))
    yield
    if saved is None:
        os.environ.pop("CNNSEARCH_CACHE_DIR", None)
    else:
        os.environ["CNNSEARCH_CACHE_DIR"] = saved


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory for a command run as a user would: ``tmp_path``, no ``$CNNSEARCH_STORAGE``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    return tmp_path


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
        missing(message)
    cluster = PgCluster(bindir)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PgCluster) -> str:
    """``postgresql+psycopg://cnn:PASSWORD@127.0.0.1:PORT/cnnsearch`` of the session's server."""
    return pg_cluster.url


@pytest.fixture(scope="session")
def _tiny_study_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_tiny_study(tmp_path_factory.mktemp("tiny-study"))


@pytest.fixture(scope="session")
def tiny_study(_tiny_study_files: Path) -> Callable[[Path], str]:
    """Copies the session's finished tiny study into a folder and returns its storage URL there.

    The copy (``DIR/cnnsearch.db`` and ``DIR/cnnsearch-artifacts/`` with the kept checkpoints) is
    study :data:`tests.support.studies.STUDY`: 5 trials of ``cnnsearch run --dataset digits --space
    tiny --keep-checkpoints``. The study is trained once per session, on first use.
    """
    return lambda dest: copy_study(_tiny_study_files, dest)
