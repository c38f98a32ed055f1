"""cnnsearch's own errors: one small hierarchy, each a one-line message for the user.

:class:`CnnSearchError` is the base of every error of ours that means bad input or a
state the user must fix (the CLI prints it and exits 2); the study's own errors are in
:mod:`search.study.errors`. :class:`TrialFailed` is not a user error: one trial cannot go on.
"""


class CnnSearchError(Exception):
    """Bad input or a state the user must fix; the CLI prints the message and exits 2."""


class DataError(CnnSearchError):
    """A dataset cannot be loaded or split as asked."""


class ModelError(CnnSearchError):
    """A model cannot be built from a config (e.g. pretrained weights missing offline)."""


class TrialFailed(Exception):
    """One trial cannot go on (NaN loss, out of memory, timeout).

    Not a user error: the worker records the reason on the trial as FAIL and the
    study goes on. ``reason`` is a short machine-readable tag (``nan_loss``, ``oom``,
    ``timeout``); the message is for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
