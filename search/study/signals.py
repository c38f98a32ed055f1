"""SIGTERM as a clean stop: the running trial is marked FAIL (``interrupted``) before the worker exits."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from search.study.errors import WorkerStopped


def _raise_stopped(signum: int, frame: object) -> None:
    raise WorkerStopped(f"signal {signal.Signals(signum).name}")


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`WorkerStopped`; the previous handler is back after it.

    Only the main thread can install handlers: elsewhere (a worker loop run from a thread)
    the block runs with the process's handlers as they are.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
