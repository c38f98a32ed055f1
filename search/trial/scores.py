"""Validation scores beyond accuracy and loss: scikit-learn's, or the user's own function.

A :class:`Score` is computed from each epoch's validation pass (the labels and the logits it
already produced, as NumPy arrays on the CPU): no second pass over the data. Its value lands
in the trial's curves every epoch, and the last epoch's in :attr:`TrialMetrics.scores`.

A user's function is named ``module:function`` (importable where the worker runs) or
``path/to/file.py:function``, and called as ``function(y_true, logits) -> float`` with
``y_true`` an int64 array of shape ``(n,)`` and ``logits`` a float32 array of shape
``(n, classes)``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.trial.errors import CnnSearchError
from spaces.references import ReferenceImportError, import_file, import_module, is_file_target, split_reference

ScoreFunction = Callable[[np.ndarray, np.ndarray], float]


class ScoreError(CnnSearchError):
    """A score that cannot be set up: a user function that cannot be imported."""


class ScoreFailed(Exception):
    """A score raised or returned no finite number: that trial fails with this one-line message."""


# scikit-learn is imported where a score is computed: it costs ~1 s, and most studies use none of these.
def _macro_f1(y_true: np.ndarray, logits: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    # Every class counts, also one the model never predicts (its F1 is 0, not left out).
    return f1_score(y_true, logits.argmax(1), labels=np.arange(logits.shape[1]), average="macro", zero_division=0)


def _balanced_accuracy(y_true: np.ndarray, logits: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": a small val split, not an error
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(y_true, logits.argmax(1))


def _top5_accuracy(y_true: np.ndarray, logits: np.ndarray) -> float:
    from sklearn.metrics import top_k_accuracy_score

    classes = logits.shape[1]
    if classes <= 5:
        raise ScoreFailed(f"top5_accuracy needs more than 5 classes (every prediction is in the top 5 of "
                          f"{classes}); use accuracy")
    return top_k_accuracy_score(y_true, logits, k=5, labels=np.arange(classes))


BUILTIN: dict[str, tuple[str, ScoreFunction]] = {
    "macro_f1": ("val_macro_f1", _macro_f1),
    "balanced_accuracy": ("val_balanced_accuracy", _balanced_accuracy),
    "top5_accuracy": ("val_top5_accuracy", _top5_accuracy),
}
"""Objective name -> (metric name, function); all maximised."""


@dataclass(frozen=True)
class Score:
    """One score of the validation pass: ``key`` names it in the trial's user attrs and curves."""

    key: str
    function: ScoreFunction

    def __call__(self, y_true: np.ndarray, logits: np.ndarray) -> float:
        try:
            value = float(self.function(y_true, logits))
        except ScoreFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: any error fails the trial, with its message
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ScoreFailed(f"{self.key} raised {type(exc).__name__}: {first}".rstrip(": ")) from exc
        if not math.isfinite(value):
            raise ScoreFailed(f"{self.key} returned {value}; a score must be a finite number")
        return value


def builtin_score(name: str) -> Score:
    key, function = BUILTIN[name]
    return Score(key, function)


def user_score(ref: str, where: str = "--objectives") -> Score:
    """The user's function ``module:function`` or ``FILE.py:function`` as a score keyed ``ref``."""
    return Score(ref, load_function(ref, where))


def load_function(ref: str, where: str = "--objectives") -> ScoreFunction:
    """Import ``module:function`` or ``FILE.py:function``; a ScoreError names what is missing."""
    hint = "give module:function (importable here) or path/to/file.py:function"
    parts = split_reference(ref)
    if parts is None:
        raise ScoreError(f"{where}: {ref!r} is not a function reference; {hint}")
    module_name, name = parts
    try:
        if is_file_target(module_name):
            path = os.path.abspath(os.path.expanduser(module_name))
            module = import_file(Path(path))
            module_name = path
        else:
            module = import_module(module_name)
    except ReferenceImportError as exc:
        what = f"no file {module_name}" if str(exc) == "not found" else f"{module_name!r} {exc}"
        raise ScoreError(f"{where}: {what}; {hint}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ScoreError(f"{where}: {module_name!r} has no function {name!r}; {hint}")
    return function


def validation_scores(scores: tuple[Score, ...], y_true: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Each score of one validation pass, by key."""
    return {score.key: score(y_true, logits) for score in scores}
