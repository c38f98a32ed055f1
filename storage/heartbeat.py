"""A trial's heartbeat: proof, written to the storage, that its worker is alive.

Two records per beat: Optuna's heartbeat row (what ``fail_stale_trials`` reads to fail the
trial of a dead worker) and the trial user attr :data:`LAST_HEARTBEAT_ATTR` (seconds since
the epoch), which ``cnnsearch status`` and the dashboard can read: Optuna has no public way
to read its heartbeat table back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

import optuna

from storage.errors import StorageError

log = logging.getLogger(__name__)

LAST_HEARTBEAT_ATTR = "last_heartbeat"
"""Trial user attr: when its worker last proved alive (``time.time()``)."""

INTERVAL_ENV = "CNNSEARCH_HEARTBEAT_INTERVAL"
"""Seconds between heartbeats of a worker's running trial (default 10)."""

GRACE_ENV = "CNNSEARCH_HEARTBEAT_GRACE"
"""Seconds without a heartbeat after which a trial's worker counts as dead (default 3 intervals)."""

DEFAULT_INTERVAL = 10


def heartbeat_settings(environ: Mapping[str, str] | None = None) -> dict[str, int | None]:
    """``open_storage`` keyword arguments for heartbeats, from :data:`INTERVAL_ENV` and :data:`GRACE_ENV`.

    A setting of the deployment, not of one command: every worker of a study should use the
    same values, and workers started by Ray or docker-compose inherit the environment, not
    flags. Unset means the defaults (10 s, grace three intervals); ``0`` turns heartbeats off.

    Raises:
        StorageError: a value that is not a whole number of seconds.
    """
    env = os.environ if environ is None else environ
    interval = _seconds(env, INTERVAL_ENV, DEFAULT_INTERVAL)
    grace = _seconds(env, GRACE_ENV, None)
    return {"heartbeat_interval": interval or None, "grace_period": grace}


def _seconds(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StorageError(f"${name}={raw!r} is not a number of seconds; use a whole number like 10 (0: off)")
    return value


class Heartbeat:
    """Record a heartbeat for one trial every ``interval`` seconds until stopped.

    Written by hand because Optuna's heartbeat thread lives in a private module
    (``optuna.storages._heartbeat``) and only runs inside ``Study.optimize``; our worker
    loop claims trials itself. A storage without heartbeats makes this a no-op. A failed
    write (a database restart) is logged and retried at the next beat, not raised: the
    trial keeps training and the grace period covers short outages.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        get_interval = getattr(storage, "get_heartbeat_interval", None)
        self._interval = get_interval() if get_interval else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._interval:
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self._trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
                self._storage.set_trial_user_attr(self._trial_id, LAST_HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # the trial ended between two beats: nothing left to prove
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("heartbeat for trial id %d not recorded: %s", self._trial_id,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if self._stop.wait(self._interval):
                return
