"""Stop signals as clean stops: the running trial is handed back to the study, or failed and retried.

SIGTERM (what clouds, Kubernetes and SLURM send before they stop a machine) raises
:class:`WorkerStopped`: the worker hands its trial back as WAITING, and another worker continues
it from its checkpoint. Ctrl-C (SIGINT) raises KeyboardInterrupt as usual: the trial is marked
FAIL ``interrupted`` and queued again, unless ``--on-interrupt requeue`` asks for the hand-back.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from search.study.errors import WorkerStopped

ON_INTERRUPT = ("fail", "requeue")
"""What Ctrl-C does to the running trial: FAIL ``interrupted`` (and retried), or handed back like on SIGTERM."""

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies (Linux)."""

PARENT_POLL_SECONDS = 1.0
"""How often a worker checks that its parent lives where the kernel cannot tell it (not Linux)."""

_held = 0
_pending: BaseException | None = None
_stopping = False


def _stop(stop: BaseException) -> None:
    """Raise the first stop (or keep it for the end of :func:`stops_held`); ignore the ones after it.

    One stop is enough, and a second one would cut short the first one's work: ending the trial,
    writing its checkpoint. It comes often: Ctrl-C reaches a run and its worker processes, and the
    run passes it on to them too; SLURM signals every process of a job.
    """
    global _pending, _stopping
    if _stopping:
        return
    _stopping = True
    if _held:
        _pending = stop
        return
    raise stop


def _hand_back(signum: int, frame: object) -> None:
    _stop(WorkerStopped(f"signal {signal.Signals(signum).name}", signum))


def _interrupt(signum: int, frame: object) -> None:
    _stop(KeyboardInterrupt())


@contextmanager
def stop_on_signals(on_interrupt: str = "fail", sigint_cancels: bool = False) -> Iterator[None]:
    """Within the block SIGTERM raises :class:`WorkerStopped`, and so does SIGINT with ``on_interrupt``
    ``requeue`` (else KeyboardInterrupt); the previous handlers are back after it.

    Only the first stop is raised (or held within :func:`stops_held`); later ones are ignored. A
    SIGINT ignored by this process (started in the background by a non-interactive shell) stays
    ignored, unless ``sigint_cancels``: in a Ray task SIGINT is Ray's cancel, never a person's Ctrl-C,
    and a run started with ``nohup ... &`` passes SIGINT ignored down to Ray's workers. Only the main thread can install
    handlers: elsewhere (a worker loop run from a thread) the block runs with the process's
    handlers as they are.
    """
    handlers: dict[int, Callable[[int, object], None]] = {signal.SIGTERM: _hand_back}
    if sigint_cancels or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        handlers[signal.SIGINT] = _hand_back if on_interrupt == "requeue" else _interrupt
    previous = {}
    try:
        for signum, handler in handlers.items():
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        yield
        return
    global _stopping
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stopping = False


@contextmanager
def stops_held() -> Iterator[None]:
    """A stop signal that comes within the block is raised when the block ends, not inside it.

    For steps that must not be cut in two: claiming a trial and knowing its id, ending a stopped
    worker's trial. Without handlers of :func:`stop_on_signals` it changes nothing.
    """
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            stop, _pending = _pending, None
            raise stop


def raise_held_stop() -> None:
    """Raise the stop that came within :func:`stops_held`, if one did; else nothing.

    For a loop inside the block that can stop cleanly between its steps: training asks after
    every step (``search.trial.train.Stop``), so SIGTERM stops it with that step's state saved
    in the checkpoint, instead of cutting a step in two.
    """
    global _pending
    if _pending is not None:
        stop, _pending = _pending, None
        raise stop


def stop_with_parent(parent_pid: int) -> None:
    """Have this process get SIGTERM when its parent ``parent_pid`` dies, however it dies.

    Linux sends it (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread checks every
    :data:`PARENT_POLL_SECONDS` that the parent is still this process's parent. Call it within
    :func:`stop_on_signals`, so that the running trial is handed back before the process ends.

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
