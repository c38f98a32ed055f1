"""Serialising trial claims of processes that share one SQLite file."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url


@contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock while claiming a WAITING trial, for SQLite storage only.

    Claiming reads the waiting trials and then moves one to RUNNING. PostgreSQL row-locks
    the trial between the two (Optuna's ``with_for_update``); SQLite ignores that lock, so
    two processes could both claim one trial (measured: 216 claims of 200 trials with 4
    processes). SQLite databases are local files, so a file lock beside the database makes
    the read and the update one step for every process on the machine. Other storages: no-op.
    """
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        yield
        return
    lock_path = Path(parsed.database).resolve().with_name(Path(parsed.database).name + ".claim-lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
