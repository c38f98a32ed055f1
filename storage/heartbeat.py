"""A trial's heartbeat: proof, written to the storage, that its worker is alive."""

from __future__ import annotations

import logging
import threading

import optuna

log = logging.getLogger(__name__)


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
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("heartbeat for trial id %d not recorded: %s", self._trial_id,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if self._stop.wait(self._interval):
                return
