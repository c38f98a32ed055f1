"""A function called every few seconds in a background thread, for as long as a ``with`` block runs.

Workers need this twice: the heartbeat of a running trial (:mod:`storage.heartbeat`) and the
live progress bar of a study (:mod:`search.study.progress`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """Call ``tick`` in a daemon thread every ``interval`` seconds until the block ends.

    ``first_now`` ticks as soon as the block starts (a heartbeat proves life at once);
    otherwise the first tick comes after one interval (a progress bar just drawn). ``tick``
    returns False to stop early. Leaving the block stops the thread and waits for a tick in
    progress to finish, so nothing ticks after it. Exceptions are ``tick``'s to handle: one
    that escapes ends the thread.
    """

    def __init__(self, name: str, interval: float, tick: Callable[[], bool | None], *, first_now: bool) -> None:
        self._name = name
        self._interval = interval
        self._tick = tick
        self._first_now = first_now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        if self._first_now and self._tick() is False:
            return
        while not self._stop.wait(self._interval):
            if self._tick() is False:
                return

    def __enter__(self) -> Periodic:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
