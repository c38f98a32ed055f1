"""A worker that starts while its database is away waits for it, as a running worker does."""

from __future__ import annotations

import pytest
import sqlalchemy.exc

from search.study import worker as worker_module
from search.study.worker import WorkerSettings


def test_a_worker_joining_while_the_database_restarts_waits_and_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    waits: list[float] = []

    class DatabaseAwayOnce:
        def __init__(self, *args: object) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise sqlalchemy.exc.OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(worker_module, "Worker", DatabaseAwayOnce)
    monkeypatch.setattr(worker_module.time, "sleep", waits.append)
    outage = worker_module._Outage("postgresql+psycopg://cnn@127.0.0.1/cnnsearch")
    joined = worker_module._join("postgresql+psycopg://cnn@127.0.0.1/cnnsearch", "s", WorkerSettings(), None, outage)
    assert isinstance(joined, DatabaseAwayOnce)
    assert len(attempts) == 2 and len(waits) == 1 and 0.75 <= waits[0] <= 1.25  # the first back-off step


def test_a_worker_gives_up_on_a_database_gone_for_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    class DatabaseAway:
        def __init__(self, *args: object) -> None:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))

    clock = iter(range(0, 100_000, 100))
    monkeypatch.setattr(worker_module, "Worker", DatabaseAway)
    monkeypatch.setattr(worker_module.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: float(next(clock)))
    with pytest.raises(worker_module.StorageError, match="unreachable for .* s"):
        worker_module._join("sqlite:///x.db", "s", WorkerSettings(), None, worker_module._Outage("sqlite:///x.db"))
