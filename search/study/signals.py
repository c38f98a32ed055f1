"""SIGTERM as a clean stop: the running trial is marked FAIL (``interrupted``) before the worker exits.

A worker process started by a run also gets SIGTERM when that run dies, however it dies
(``kill -9`` included), so that no worker works on alone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from search.study.errors import WorkerStopped

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies (Linux)."""

PARENT_POLL_SECONDS = 1.0
"""How often a worker checks that its parent lives where the kernel cannot tell it (not Linux)."""


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


def stop_with_parent(parent_pid: int) -> None:
    """Have this process get SIGTERM when its parent ``parent_pid`` dies, however it dies.

    Linux sends it (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread checks every
    :data:`PARENT_POLL_SECONDS` that the parent is still this process's parent. Call it within
    :func:`stop_on_sigterm`, so that the running trial is marked FAIL before the process ends.

    Raises:
        WorkerStopped: the parent died before this call (the signal would never come).
    """
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        raise WorkerStopped(f"its parent process {parent_pid} is gone")


def _parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc prctl (an unusual libc)
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # an orphan is adopted by another process
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
