"""How workers claim trials: one WAITING trial moved to RUNNING for exactly one worker, and back.

The trial budget is study-wide: :func:`claim_waiting_trial` takes a waiting trial,
:func:`hand_back_trial` returns one a stopped worker held, and
:func:`study_lock` makes each read-then-write step on a study (creating it, enqueueing its
known points, claiming a trial or creating one within the budget) a single step for every
process that works on it; :func:`past_budget` sets aside a trial that was made past the budget
all the same, across a database restart.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.records import FAIL_MESSAGE, FAIL_REASON, HANDED_BACK, OVER_BUDGET
from storage.studies import is_original

_PG_CONNECT_TIMEOUT_S = 10


@contextmanager
def study_lock(url: str, study_name: str) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on study ``study_name`` of the storage at ``url`` for the block.

    Creating a study and writing its spec, counting its trials and then adding some, reading the
    waiting trials and then moving one to RUNNING: each reads, then writes. Two processes doing
    one of these at once would both act on the same reading (two runs started together created
    one study twice over, or enqueued two budgets; measured: 8 trials for ``--trials 4``).

    - SQLite: a file lock beside the database. SQLite databases are local files, so it covers
      every process that can open the file; SQLite ignores the row locks PostgreSQL takes.
    - PostgreSQL: a transaction-level advisory lock keyed by the study name, held on a
      connection of its own for the block; the server releases it if this process dies.
    - Other storages: no lock.

    The block gets ``still_held``: call it right before a write that rests on what the block read.
    A PostgreSQL server that restarts (or drops the lock's connection) mid-block has released the
    lock while the block runs on, and the storage's own connections reconnect to the new server:
    a count read before the restart and a trial created after it let another worker, locked on
    the new server, count the same trials and create one too. ``still_held`` raises the driver's
    ``OperationalError`` then (one of :data:`storage.engine.DATABASE_LOST`), so the write is not
    made. A write already under way when the restart comes can still land on the new server
    unlocked: :func:`past_budget` sets aside a trial made so. Ending the block never raises for a
    lost lock: its transaction holds no writes, and the server has released it already.

    Not re-entrant: a process holding the lock that asks for it again waits for ever (another
    connection, another open file), so a function that takes it is never called inside a block.
    """
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database:
        lock_path = Path(parsed.database).resolve().with_name(Path(parsed.database).name + ".claim-lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield always_held
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif parsed.drivername.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                          connect_args={"connect_timeout": _PG_CONNECT_TIMEOUT_S})
        try:
            with engine.connect() as connection:
                connection.begin()
                connection.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_xact_lock(_lock_key(study_name))))
                try:
                    yield lambda: _still_connected(connection)
                finally:
                    # Rolled back, not committed: the transaction wrote nothing, and ending it releases the
                    # lock. On a broken connection the server has released it already.
                    with suppress(sqlalchemy.exc.DBAPIError):
                        connection.rollback()
        finally:
            engine.dispose()
    else:
        yield always_held


def storage_lock(storage: optuna.storages.BaseStorage, study_name: str) -> AbstractContextManager[Callable[[], None]]:
    """:func:`study_lock` on the database of ``storage`` (an ``RDBStorage`` or Optuna's cache around one); no
    lock for a storage without a URL (in memory)."""
    # Optuna keeps the cached one's backend private. The URL open_storage made absolute: the lock of a
    # worker started in another directory is the same.
    url = getattr(getattr(storage, "_backend", storage), "url", None)
    return study_lock(url, study_name) if url else nullcontext(always_held)


def always_held() -> None:
    """``still_held`` of a lock that cannot be lost mid-block (a file lock), or where there is no lock."""


def _still_connected(connection: sqlalchemy.Connection) -> None:
    """Raise if the lock's connection (and with it the lock) is gone."""
    if connection.invalidated:
        raise sqlalchemy.exc.OperationalError("SELECT 1", None, Exception("the study lock's connection was lost"))
    connection.execute(sqlalchemy.select(1))


def _lock_key(study_name: str) -> int:
    """The advisory lock id of a study: a signed 64-bit hash of its name (the same in every process)."""
    digest = hashlib.blake2b(f"cnnsearch-study:{study_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def claim_waiting_trial(storage: optuna.storages.BaseStorage, study_id: int) -> int | None:
    """Move one WAITING trial to RUNNING for this worker and return its id, or None.

    The storage's state update is the lock: ``set_trial_state_values`` returns False
    when another worker claimed the trial first (a row lock on PostgreSQL; on SQLite the
    caller holds :func:`study_lock`), so no trial is run twice. This is
    Optuna's own waiting-trial pop, which ``Study.ask`` does not expose without also
    creating a new trial when the queue is empty.
    """
    beats = getattr(storage, "get_heartbeat_interval", lambda: None)()
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if beats and HANDED_BACK in trial.user_attrs:
                # A handed-back trial keeps its last heartbeat, maybe hours old: refreshed before it runs
                # again, or another worker's stale-trial check could fail it before this worker's first beat.
                storage.record_heartbeat(trial._trial_id)
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def hand_back_trial(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Move the RUNNING trial ``trial_id`` back to WAITING, for any worker to claim; False if it had ended.

    The same trial, not a copy: it keeps its number, params and reports, uses no more of the
    budget, and the worker that claims it resumes it from its checkpoint. Counted in the user
    attr :data:`~storage.records.HANDED_BACK`. A waiting trial is never stale for the heartbeat
    check (it reads RUNNING trials only). It had ended when another worker failed it meanwhile
    (no heartbeat within the grace period).
    """
    try:
        times = storage.get_trial(trial_id).user_attrs.get(HANDED_BACK, 0)
        storage.set_trial_user_attr(trial_id, HANDED_BACK, times + 1)
        return storage.set_trial_state_values(trial_id, state=TrialState.WAITING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def past_budget(storage: optuna.storages.BaseStorage, study_id: int, trial_id: int, budget: int, seen: int) -> bool:
    """Whether the new trial ``trial_id`` was made past the study's ``budget``; if so it is set aside.

    ``seen``: how many trials the study held when its trials were counted (under the budget).
    Optuna numbers a study's trials 0, 1, 2 ... in the order they are made, so a trial numbered
    ``seen`` was the next one made after the count, which stands: nothing is read then (the
    case of every trial made under a lock that held). Else another trial came in between and the
    trials are counted again.

    Set aside: failed unrun with reason :data:`~storage.records.OVER_BUDGET`, which takes it out of
    the count (:func:`storage.studies.is_original`) and out of the retries. Checked after every
    trial a worker makes, because :func:`study_lock` alone cannot hold across a restart: Optuna's
    ``create_new_trial`` tries again for up to ~10 s when its database is gone (its loop for
    deadlocks: a create called with the server stopped, and the server started 1.5 s later,
    returned 2.4 s after the call, measured), and lands on the new server, where the lock was
    released with the old one, maybe after another worker locked there counted the same trials
    and made one (CI twice: 9 trials of a budget of 8 after the restart test's restart).
    The budget is the first ``budget`` counted trials by number (Optuna numbers them under a lock
    on the study's row), so which trials are past it never changes. Left: a database lost again
    between the create and this check leaves the trial running unrun, until the stale-trial
    check fails it and queues its retry.
    """
    number = _trial_number(storage, trial_id)
    if number == seen:
        return False
    earlier = sum(1 for t in storage.get_all_trials(study_id, deepcopy=False) if t.number < number and is_original(t))
    if earlier < budget:
        return False
    storage.set_trial_user_attr(trial_id, FAIL_REASON, OVER_BUDGET)  # out of the count from here on
    storage.set_trial_user_attr(trial_id, FAIL_MESSAGE, f"made after {earlier} trials of a budget of {budget} "
                                                        "while the database restarted; never run")
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return True


def _trial_number(storage: optuna.storages.BaseStorage, trial_id: int) -> int:
    """The number of trial ``trial_id``: from Optuna's trial cache when it holds it (private; no query), else read.

    A just-made trial is running, and Optuna's cache reads a running trial from the database
    again: a query per trial made (~2 ms on SQLite, measured) for a number the cache holds.
    """
    known = getattr(storage, "_trial_id_to_study_id_and_number", {}).get(trial_id)
    return known[1] if known is not None else storage.get_trial_number_from_id(trial_id)
