"""cnnsearch's own errors: one small hierarchy, each a one-line message for the user."""


class CnnSearchError(Exception):
    """Bad input or a state the user must fix; the CLI prints the message and exits 2."""


class DataError(CnnSearchError):
    """A dataset cannot be loaded or split as asked."""


class ModelError(CnnSearchError):
    """A model cannot be built from a config (e.g. pretrained weights missing offline)."""


class StudyError(CnnSearchError):
    """A study cannot be created, resumed or read as asked."""


class TrialFailed(Exception):
    """One trial cannot go on (NaN loss, out of memory, timeout).

    Not a user error: the worker records the reason on the trial as FAIL and the
    study goes on. ``reason`` is a short machine-readable tag (``nan_loss``, ``oom``,
    ``timeout``); the message is for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TooManyFailures(CnnSearchError):
    """``max_failures`` trials in a row failed: the study is stopped with the last reason."""


class WorkerStopped(BaseException):
    """The worker was told to stop (SIGTERM); raised out of the running trial.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it.
    """


def user_errors() -> tuple[type[Exception], ...]:
    """Every error that means bad input or a state the user must fix (exit code 2 in the CLI)."""
    from reports.errors import ReportError
    from spaces.errors import SpaceError
    from storage.errors import StorageError

    return (CnnSearchError, SpaceError, StorageError, ReportError)
