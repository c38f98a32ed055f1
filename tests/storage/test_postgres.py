"""Studies in a real PostgreSQL server: connecting, errors without passwords, restarts."""

from __future__ import annotations

import time
import uuid

import optuna
import pytest

from storage import StorageError, mask_url, open_storage
from tests.support.pg import PgCluster, free_port
from tests.support.processes import open_at_once, square

pytestmark = pytest.mark.postgres

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_name() -> str:
    # The server lives for the whole session: each test gets a study of its own.
    return f"study-{uuid.uuid4().hex[:8]}"


def test_study_runs_and_reloads_from_another_storage_instance(pg_url: str) -> None:
    name = _study_name()
    study = optuna.create_study(study_name=name, storage=open_storage(pg_url))
    study.optimize(square, n_trials=5)

    reloaded = optuna.load_study(study_name=name, storage=open_storage(pg_url))
    assert len(reloaded.trials) == 5
    assert reloaded.best_value == study.best_value


def test_postgres_scheme_without_driver_is_accepted(pg_cluster: PgCluster) -> None:
    plain = pg_cluster.url.replace("postgresql+psycopg://", "postgres://")
    name = _study_name()
    optuna.create_study(study_name=name, storage=open_storage(plain))
    assert name in optuna.get_all_study_names(storage=open_storage(pg_cluster.url))


def test_password_from_pgpassword_is_used_and_never_shown(
    pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_cluster.url_for(password=None)
    monkeypatch.setenv("PGPASSWORD", pg_cluster.password)

    storage = open_storage(url)

    optuna.create_study(study_name=_study_name(), storage=storage)
    assert pg_cluster.password not in mask_url(url)


def test_wrong_password_is_reported_without_any_password(pg_cluster: PgCluster) -> None:
    wrong = "wrong" + pg_cluster.password[::-1]
    with pytest.raises(StorageError) as raised:
        open_storage(pg_cluster.url_for(password=wrong))
    message = str(raised.value)
    assert "password authentication failed" in message
    assert f"cnn:***@127.0.0.1:{pg_cluster.port}/cnnsearch" in message
    assert wrong not in message and pg_cluster.password not in message
    assert "\n" not in message


def test_missing_database_is_named(pg_cluster: PgCluster) -> None:
    with pytest.raises(StorageError, match='database "no_such_db" does not exist'):
        open_storage(pg_cluster.url_for(password=pg_cluster.password, database="no_such_db"))


def test_unreachable_server_fails_fast_with_masked_url() -> None:
    port = free_port()  # nobody listens there: the connection is refused at once
    url = f"postgresql+psycopg://cnn:topsecretpw@127.0.0.1:{port}/cnnsearch"

    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        open_storage(url, connect_timeout=5)
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert elapsed < 5
    assert f"postgresql+psycopg://cnn:***@127.0.0.1:{port}/cnnsearch" in message
    assert "Connection refused" in message
    assert "topsecretpw" not in message
    assert "\n" not in message


def test_study_survives_a_server_restart_between_trials(pg_cluster: PgCluster) -> None:
    name = _study_name()
    study = optuna.create_study(study_name=name, storage=open_storage(pg_cluster.url))
    study.optimize(square, n_trials=2)

    pg_cluster.restart()  # every pooled connection of `study` is now dead

    study.optimize(square, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4


def test_workers_creating_fresh_tables_at_once_all_succeed(pg_cluster: PgCluster) -> None:
    database = f"fresh_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(database)
    # Without a retry, concurrent CREATE TABLEs collide on a duplicate pg_type row.
    assert open_at_once(pg_cluster.url_for(password=pg_cluster.password, database=database)) == [0, 0, 0]
