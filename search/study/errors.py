"""The errors of a study as a whole: it cannot be made or joined, it failed too often, it was stopped."""

import signal

from search.trial.errors import CnnSearchError


class StudyError(CnnSearchError):
    """A study cannot be created, resumed or read as asked."""


class TooManyFailures(CnnSearchError):
    """``max_failures`` trials in a row failed: the study is stopped with the last reason."""


class WorkerStopped(BaseException):
    """The worker was told to stop and hand its trial back (SIGTERM; Ctrl-C with ``--on-interrupt requeue``).

    Raised out of the running trial, which the worker then hands back to the study as WAITING.
    ``signum`` is the signal that asked for it (the CLI exits with 128 + it). A BaseException,
    like KeyboardInterrupt, so no ``except Exception`` swallows it.
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum


def user_errors() -> tuple[type[Exception], ...]:
    """Every error that means bad input or a state the user must fix (exit code 2 in the CLI)."""
    from reports.errors import ReportError
    from spaces.errors import SpaceError
    from storage.errors import StorageError

    return (CnnSearchError, SpaceError, StorageError, ReportError)
