"""Opening the SQL database a study lives in, as an Optuna ``RDBStorage``.

What each backend gets:

- SQLite (``sqlite:///PATH``): the WAL journal (readers never block the writer, so several
  worker processes on one file do not hit "database is locked"), ``synchronous=NORMAL`` (safe
  with WAL: a power cut can lose the last commits but never corrupts the file) and a 60 s busy
  timeout. The path is made absolute so a worker started in another directory opens the
  same file.
- PostgreSQL (``postgresql+psycopg://``): ``pool_pre_ping`` and a connect timeout.

Crash safety (both backends, unless ``heartbeat_interval=None``): every running trial records a
heartbeat; a trial whose heartbeat is older than the grace period is failed by the next worker
that starts a trial (Optuna calls ``fail_stale_trials`` then), and the retry callback queues a
WAITING copy of it with the same params, which the next ``ask`` picks up. Its system attrs name
the trial it retries (``RetryHeartbeatStaleTrialCallback.retried_trial_number``).

Connection loss, what is and is not survived:

- The server restarting, or dropping idle connections, between database calls: survived. Each
  pooled connection is pinged when checked out and replaced if dead.
- The server being down at the moment a worker calls it: that call fails
  (``optuna.exceptions.StorageInternalError``); Optuna has no retry for single calls. If it
  happens inside a trial, the trial is lost; its heartbeat stops, so once the server is back
  another worker fails it and the retry callback queues it again.
- A worker killed (SIGKILL, OOM, preempted node): its running trial is failed after the grace
  period and retried, up to ``max_retry`` times.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import URL

from storage.errors import StorageError
from storage.urls import ACCEPTED_URLS, POSTGRES_SCHEME, mask_url, normalize_scheme, parse_storage_url

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60
"""How long a SQLite writer waits for another process's write lock before giving up."""

DATABASE_LOST = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
                 sqlalchemy.exc.InterfaceError)
"""What a database call raises when the server is down, the connection broke or the file is locked."""

_REASON_MAX_CHARS = 300
_OPEN_ATTEMPTS = 4


class _WalConnection(sqlite3.Connection):
    """A sqlite3 connection that switches the database to WAL as soon as it is opened.

    Passed as the sqlite3 ``factory`` connect argument rather than attached as an SQLAlchemy
    "connect" event: ``RDBStorage`` rebuilds its engine from the URL and ``engine_kwargs`` when it
    is unpickled in a worker process, so an event listener would be lost there, while this
    class travels inside ``engine_kwargs`` (pickled by reference).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # journal_mode=WAL is stored in the file (a no-op once set); synchronous is per connection.
        self._switch_to_wal(kwargs.get("timeout", SQLITE_BUSY_TIMEOUT_S))
        self.execute("PRAGMA synchronous=NORMAL")

    def _switch_to_wal(self, timeout: float) -> None:
        """``PRAGMA journal_mode=WAL``, tried again while another connection holds the write lock.

        The switch reads the file, then needs its exclusive lock. While another process holds the
        write lock of a file still in rollback mode (two `cnnsearch run` of one study started
        together: one checks the file is writable or creates Optuna's tables while the other opens
        it), SQLite answers "database is locked" at once, without waiting the busy timeout: a reader
        waiting for a writer could deadlock. Once the pragma has failed, this connection holds no
        lock, so waiting and trying again is safe; the busy timeout bounds the wait as for any write.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.1))


def open_storage(
    url: str,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = None,
    max_retry: int = 2,
    connect_timeout: int = 10,
    *,
    read_only: bool = False,
    existing: bool = False,
) -> optuna.storages.RDBStorage:
    """Open (creating the tables if needed) the study database at ``url``.

    Args:
        url: ``sqlite:///PATH`` (the parent directory must exist) or
            ``postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DATABASE``; ``postgresql://`` and
            ``postgres://`` are accepted. Without a password in the URL, libpq uses ``PGPASSWORD``.
        heartbeat_interval: seconds between a running trial's heartbeats; ``None`` turns heartbeats,
            stale-trial failing and retries off.
        grace_period: seconds without a heartbeat after which a running trial counts as dead;
            default three heartbeat intervals. Must be longer than ``heartbeat_interval``.
        max_retry: how many times a trial killed with its worker is queued again.
        connect_timeout: seconds to wait for a PostgreSQL server to answer (not used for SQLite).
        read_only: the caller only reads studies (``status``, ``report``...): a SQLite file must exist
            (a typo creates no empty database) and need not be writable. Otherwise a SQLite file must
            be writable and not locked by another process, checked here rather than at the first write.
        existing: the caller joins a study that `run` made (a worker): a SQLite file must exist, as
            for ``read_only``, but be writable.

    Returns:
        An ``RDBStorage`` whose connection has been tested. It pickles to a handle that opens its
        own connections, with the same settings, in the process that unpickles it.

    Raises:
        StorageError: one line with the URL (password masked) and the reason: an unknown scheme,
            a missing directory or file, a read-only or locked file, an unreachable server, a wrong
            password, a missing database, or a database written by an incompatible Optuna.
    """
    url = normalize_scheme(url.strip())
    shown = mask_url(url)
    parsed = parse_storage_url(url)

    if parsed.drivername == "sqlite":
        url, engine_kwargs = _sqlite_settings(parsed, shown, read_only, existing or read_only)
    elif parsed.drivername == POSTGRES_SCHEME:
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": connect_timeout}}
    else:
        raise StorageError(
            f"storage URL {shown!r} has unsupported scheme {parsed.drivername!r}; expected {ACCEPTED_URLS}"
        )

    heartbeat_kwargs = _heartbeat_settings(heartbeat_interval, grace_period, max_retry)
    try:
        storage = _create_rdb_storage(url, engine_kwargs, heartbeat_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        reason = short_reason(error, parsed.password)
        raise StorageError(f"cannot open storage {shown}: {reason}") from error
    except ImportError as error:
        raise StorageError(
            f"cannot open storage {shown}: its database driver is not installed ({error}); "
            "install psycopg[binary] for PostgreSQL"
        ) from error
    except RuntimeError as error:
        # The schema check: the message says which optuna wrote the tables and the upgrade command.
        raise StorageError(f"cannot use storage {shown}: {_one_line(str(error))}") from error
    logger.debug("opened storage %s", shown)
    return storage


def _create_rdb_storage(
    url: str, engine_kwargs: dict[str, Any], heartbeat_kwargs: dict[str, Any]
) -> optuna.storages.RDBStorage:
    """``RDBStorage(url, ...)``, tried again when another process was creating the same tables.

    Optuna creates missing tables and stamps the schema version without a lock, so workers that
    open a fresh database at the same moment collide ("table ... already exists", a duplicate
    alembic_version row); a second try finds the tables made.
    """

    def attempt() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            # Heartbeats and the retry callback are marked experimental in Optuna; we use them on
            # purpose, and the warning would be printed once per worker.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)

    for _ in range(_OPEN_ATTEMPTS - 1):
        try:
            return attempt()
        except sqlalchemy.exc.SQLAlchemyError as error:
            if not _is_table_creation_race(error):
                raise
            logger.debug("another process is creating the tables of %s; trying again", mask_url(url))
            time.sleep(random.uniform(0.05, 0.5))
    return attempt()


def _is_table_creation_race(error: sqlalchemy.exc.SQLAlchemyError) -> bool:
    if isinstance(error, sqlalchemy.exc.IntegrityError):
        return True
    # SQLite reports a table created meanwhile as OperationalError, PostgreSQL as ProgrammingError.
    return "already exists" in str(getattr(error, "orig", error))


def _sqlite_settings(parsed: URL, shown: str, read_only: bool, existing: bool) -> tuple[str, dict[str, Any]]:
    """The absolute-path URL and engine settings for a SQLite file; checks it can be used as asked."""
    database = parsed.database
    if not database or database == ":memory:":
        raise StorageError(f"storage URL {shown!r} names no file; expected {ACCEPTED_URLS}")
    path = Path(os.path.abspath(Path(database).expanduser()))
    if not path.parent.is_dir():
        raise StorageError(
            f"storage URL {shown!r}: directory {path.parent} does not exist; create it or choose another path"
        )
    if existing and not path.is_file():
        raise StorageError(f"no such database file: {path} (storage URL {shown!r}); check --storage or "
                           "$CNNSEARCH_STORAGE (`cnnsearch run` creates the database)")
    if not read_only:
        _check_writable(path, shown)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "factory": _WalConnection}}
    return parsed.set(database=str(path)).render_as_string(hide_password=False), engine_kwargs


def _check_writable(path: Path, shown: str) -> None:
    """Refuse a SQLite file that cannot be written or is locked, with the cause, before any write fails.

    SQLite reports these late and vaguely: an immutable file or a read-only mount fails the first
    write ("attempt to write a readonly database", "unable to open database file", which Optuna
    wraps as "invalid data ... exceeding max length"), and a lock held by another process is
    waited for at every write. The directory must be writable too: the journal (``-wal``,
    ``-shm``) and the claim lock live beside the file.
    """
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            raise StorageError(f"storage {shown}: {target} is read-only; cnnsearch writes the study there "
                               f"(and its journal beside it): make it writable or choose another --storage")
    probe = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")  # the write lock: waits up to the busy timeout for other writers
        probe.execute("ROLLBACK")
    except sqlite3.DatabaseError as error:
        raise StorageError(f"cannot open storage {shown}: {_sqlite_cause(error)}") from None
    finally:
        probe.close()


def _sqlite_cause(error: BaseException) -> str:
    """A SQLite error in the user's terms: what holds the file, or what it is."""
    text = _one_line(str(error))
    if "locked" in text or "busy" in text:
        return (f"database is locked by another process (waited {SQLITE_BUSY_TIMEOUT_S} s); "
                "stop the process holding it (e.g. an open `sqlite3` shell) or choose another --storage")
    if "readonly" in text:
        return "database is read-only; make the file and its directory writable or choose another --storage"
    return text


def _heartbeat_settings(heartbeat_interval: int | None, grace_period: int | None, max_retry: int) -> dict[str, Any]:
    """RDBStorage keyword arguments for heartbeats and the retry of stale trials."""
    if heartbeat_interval is None:
        return {}
    if heartbeat_interval < 1:
        raise StorageError(f"heartbeat_interval must be at least 1 second or None, got {heartbeat_interval}")
    if grace_period is None:
        grace_period = 3 * heartbeat_interval
    if grace_period <= heartbeat_interval:
        raise StorageError(
            f"grace_period must be longer than heartbeat_interval ({heartbeat_interval} s), got {grace_period}"
        )
    if max_retry < 0:
        raise StorageError(f"max_retry must be 0 or more, got {max_retry}")

    storages = optuna.storages
    # Optuna 4.9 renamed RetryFailedTrialCallback and the RDBStorage argument that takes it.
    callback_class = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = callback_class(max_retry=max_retry)
    parameters = inspect.signature(storages.RDBStorage.__init__).parameters
    callback_argument = (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )
    return {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period, callback_argument: callback}


def short_reason(error: BaseException, password: str | None = None) -> str:
    """The driver's own message for a database error on one line, without ``password``.

    Optuna wraps every failed commit in a ``StorageInternalError`` whose own message blames
    "invalid data ... e.g. exceeding max length", whatever happened: the real cause is the
    driver's error underneath (server gone, file locked).
    """
    cause: BaseException = error
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        cause = error.__cause__
    # SQLAlchemy wraps the driver's exception in .orig; its own str() adds the SQL and a web link.
    driver_error = getattr(cause, "orig", None) or cause
    if isinstance(driver_error, sqlite3.Error):
        reason = _sqlite_cause(driver_error)
    else:
        reason = _one_line(str(driver_error)) or type(driver_error).__name__
    if password:
        reason = reason.replace(password, "***")
    if len(reason) > _REASON_MAX_CHARS:
        reason = reason[: _REASON_MAX_CHARS - 3] + "..."
    return reason


def _one_line(text: str) -> str:
    return " ".join(text.split())
