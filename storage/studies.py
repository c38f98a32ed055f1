"""Reading a study: open it by name, count its trials, find its best feasible ones.

Shared by the workers (progress, the dashboard note), the CLI and the reports, so that
"best" and "counts" mean one thing everywhere.
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from storage.errors import StorageError
from storage.names import check_study_name
from storage.records import CONSTRAINTS, FAIL_REASON, OVER_BUDGET, RETRY_OF, VAL_ACCURACY


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Open study ``name`` or raise :class:`StorageError` listing the studies there are (or saying why
    ``name`` cannot be a study name: :func:`storage.names.check_study_name`)."""
    try:
        return optuna.load_study(study_name=check_study_name(name), storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        listing = ", ".join(names) if names else "none"
        raise StorageError(f"no study named {name!r} in this storage; studies there: {listing}") from None


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    return count_states(study.get_trials(deepcopy=False))


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    """``trials`` by state name, every state present (for a caller that already read the trials)."""
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    return counts


def is_original(trial: FrozenTrial) -> bool:
    """Whether a trial counts against the budget: retries of a crashed trial do not, nor a trial set
    aside unrun because it was made past the budget (:func:`storage.claims.past_budget`)."""
    return RETRY_OF not in trial.system_attrs and trial.user_attrs.get(FAIL_REASON) != OVER_BUDGET


def feasible(trial: FrozenTrial) -> bool:
    """A trial meets its constraints (``--max-params``, ``--max-latency-ms``) when all values are <= 0."""
    return all(c <= 0 for c in trial.user_attrs.get(CONSTRAINTS, []))


def best_trials(study: optuna.Study, top: int = 1) -> list[FrozenTrial]:
    """The best feasible completed trials: the top ``top`` by value, or the Pareto front for several objectives."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    if len(study.directions) > 1:
        front_numbers = {t.number for t in study.best_trials}
        return sorted((t for t in done if t.number in front_numbers), key=lambda t: t.number)
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    done.sort(key=lambda t: (sign * t.value, t.number))
    return done[:top]


def most_accurate(study: optuna.Study, top: int = 1) -> list[FrozenTrial]:
    """The ``top`` best feasible completed trials; for several objectives, the front's most accurate.

    The trials to retrain or export: one objective ranks by its value; several rank the
    Pareto front by val accuracy (ties: the earlier trial).
    """
    best = best_trials(study, top)
    if len(study.directions) > 1:
        best = sorted(best, key=lambda t: -t.user_attrs.get(VAL_ACCURACY, 0.0))[:top]
    return best
