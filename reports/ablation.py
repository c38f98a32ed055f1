"""Ablation of each toggle and categorical choice, computed from the trials a study already ran.

For every categorical or boolean parameter (batch norm, residual, attention, optimizer,
schedule, ...) and every augmentation parameter, the completed trials are split into
those *with* a choice and those *without* it (the other choices; for augmentations,
strength > 0 against strength 0), and each side gets its number of trials, best and
median validation accuracy, and a bootstrap 95% interval of its median. The difference
of the medians gets its own bootstrap interval, so "batch norm helps" can be read off
as an interval that excludes 0.

This is an observational ablation: the other parameters were not held fixed, the
sampler chose them. The figures say what the trials saw, not a controlled experiment,
and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import bootstrap

from storage.records import VAL_ACCURACY

MIN_TRIALS = 3
"""Fewer trials than this on either side: no interval, and the row says there are too few."""

AUGMENTATION_PREFIX = "aug_"

CONFIDENCE = 0.95
N_RESAMPLES = 2000


def trial_accuracy(trial: FrozenTrial) -> float | None:
    """The validation accuracy a trial ended with (its ``val_accuracy`` user attr), or None."""
    value = trial.user_attrs.get(VAL_ACCURACY)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def ablation(trials: Sequence[FrozenTrial], *, accuracy: Callable[[FrozenTrial], float | None] = trial_accuracy,
             min_trials: int = MIN_TRIALS, n_resamples: int = N_RESAMPLES, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (parameter, choice) seen in the COMPLETE ``trials``, in parameter order.

    Each row: ``param``, ``choice`` (a display string: ``True``, ``adam``, ``> 0``),
    ``with`` and ``without`` (each ``n``, ``best``, ``median``, ``ci`` = [low, high] or
    None), ``diff_median`` (with minus without) and ``diff_ci``, ``enough`` (both sides
    have at least ``min_trials`` trials) and ``note`` (why a figure is missing, in words).
    A parameter only present in some trials (``momentum`` when the optimizer is SGD) is
    compared among the trials that have it. Bootstrap draws are seeded: the same trials
    give the same intervals.
    """
    done = [t for t in trials if t.state == TrialState.COMPLETE and accuracy(t) is not None]
    rng = np.random.default_rng(seed)
    rows = []
    for name, choices in _ablated_params(done):
        having = [t for t in done if name in t.params]
        for label, is_with in choices:
            with_acc = np.array([accuracy(t) for t in having if is_with(t.params[name])], dtype=float)
            without_acc = np.array([accuracy(t) for t in having if not is_with(t.params[name])], dtype=float)
            rows.append(_row(name, label, with_acc, without_acc, min_trials, n_resamples, rng))
    return rows


def _ablated_params(trials: Sequence[FrozenTrial]) -> list[tuple[str, list[tuple[str, Callable[[Any], bool]]]]]:
    """The parameters to ablate, each with its (label, predicate) choices."""
    distributions: dict[str, Any] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            distributions.setdefault(name, dist)
    out = []
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if len(choices) == 2 and all(isinstance(c, bool) for c in choices):
                # A toggle: one row, on against off.
                out.append((name, [("True", lambda v: v is True)]))
            else:
                out.append((name, [(str(c), _equals(c)) for c in choices]))
        elif name.startswith(AUGMENTATION_PREFIX):
            out.append((name, [("> 0", lambda v: v > 0)]))
    return out


def _equals(choice: Any) -> Callable[[Any], bool]:
    return lambda v: v == choice and type(v) is type(choice)


def _row(name: str, label: str, with_acc: np.ndarray, without_acc: np.ndarray, min_trials: int,
         n_resamples: int, rng: np.random.Generator) -> dict[str, Any]:
    enough = len(with_acc) >= min_trials and len(without_acc) >= min_trials
    row: dict[str, Any] = {
        "param": name, "choice": label,
        "with": _side(with_acc, min_trials, n_resamples, rng),
        "without": _side(without_acc, min_trials, n_resamples, rng),
        "diff_median": None, "diff_ci": None, "enough": enough, "note": "",
    }
    if len(with_acc) and len(without_acc):
        row["diff_median"] = float(np.median(with_acc) - np.median(without_acc))
    if enough:
        row["diff_ci"] = _interval((with_acc, without_acc), _median_difference, n_resamples, rng)
    else:
        short = [f"{side} {label!r}: {n}" for side, n in (("with", len(with_acc)), ("without", len(without_acc)))
                 if n < min_trials]
        row["note"] = f"too few trials for an interval ({', '.join(short)}; need {min_trials} each side)"
    return row


def _side(acc: np.ndarray, min_trials: int, n_resamples: int, rng: np.random.Generator) -> dict[str, Any]:
    if not len(acc):
        return {"n": 0, "best": None, "median": None, "ci": None}
    ci = _interval((acc,), np.median, n_resamples, rng) if len(acc) >= min_trials else None
    return {"n": int(len(acc)), "best": float(acc.max()), "median": float(np.median(acc)), "ci": ci}


def _median_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(a, axis=axis) - np.median(b, axis=axis)


def _interval(samples: tuple[np.ndarray, ...], statistic: Callable, n_resamples: int,
              rng: np.random.Generator) -> list[float]:
    """Percentile bootstrap interval (scipy); percentile because BCa fails on the ties medians make."""
    if all(np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples))  # no spread at all: every resample gives the same value
        return [value, value]
    result = bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=CONFIDENCE,
                       method="percentile", vectorized=True, paired=False, random_state=rng)
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]
