"""The study's note in optuna-dashboard: a short Markdown summary of the best configuration so far.

Workers call :func:`refresh_study_note` after each completed trial; the note is rewritten only
when that trial is now the best (one objective) or on the Pareto front (several), so people
watching the dashboard see the current winner, its metrics and its searched parameters without
opening trials one by one. The note is cnnsearch's: an edit made in the dashboard is replaced at
the next improvement.

The note is written with optuna-dashboard's own :func:`optuna_dashboard.save_note` (a study
system attr per 2045-character chunk plus a version number). Notes are kept to one chunk, so two
workers writing at the same moment leave one whole note, never a mix of both.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import shlex
from collections.abc import Callable, Iterable

import optuna
from optuna.trial import FrozenTrial

from reports.built import built_params
from reports.summary import format_value
from storage.records import NOTES, PARAMS, STUDY_OBJECTIVES
from storage.studies import best_trials

log = logging.getLogger(__name__)

NOTE_MAX_CHARS = 2045
"""optuna-dashboard stores a note in chunks of this many characters; a note of one chunk is written atomically."""

FRONT_ROWS = 8
"""Pareto-front trials listed in the note (the rest are counted)."""

_METRICS = (
    ("val_accuracy", "val accuracy", ""),
    ("val_loss", "val loss", ""),
    ("params", "parameters", ""),
    ("flops", "FLOPs", ""),
    ("latency_ms", "latency", " ms/image"),
    ("train_seconds", "train time", " s"),
    ("epochs_run", "epochs", ""),
)


def refresh_study_note(study: optuna.Study, trial_number: int) -> bool:
    """Rewrite ``study``'s dashboard note if completed trial ``trial_number`` is now among its best.

    Returns True when the note was written. Never raises: a note is a convenience, so any failure
    is logged as a warning and the study goes on: a write the storage refuses, at each trial it
    happens to (the next may pass); optuna-dashboard not installed, once a process.
    """
    try:
        best = best_trials(study, 1)
        if trial_number not in {t.number for t in best}:
            return False
        save_note = _dashboard_save_note()
        if save_note is None:
            return False
        save_note(study, study_note(study, best, trial_number))
        return True
    except Exception as exc:  # noqa: BLE001 - the note must never cost a trial or a worker
        log.warning("could not update the dashboard note of study %r after trial %d: %s",
                    study.study_name, trial_number, exc)
        return False


@functools.cache
def _dashboard_save_note() -> Callable[[optuna.Study, str], None] | None:
    """optuna-dashboard's ``save_note``, or None (warned once) where it is not installed.

    Imported at the first note due (0.3-3 s: it imports sklearn), not with this module.
    """
    try:
        from optuna_dashboard import save_note
    except ImportError as exc:
        log.warning("optuna-dashboard is not installed (%s): studies in this process get no dashboard note; "
                    "`pip install optuna-dashboard` to have one", exc)
        return None
    return save_note


def study_note(study: optuna.Study, best: list[FrozenTrial], trial_number: int) -> str:
    """The Markdown note for ``study`` whose best feasible trials (or Pareto front) are ``best``.

    Sections are dropped from the end (searched parameters first) until the note fits
    :data:`NOTE_MAX_CHARS`; it always names the best trial and its value(s).
    """
    attrs = study.user_attrs
    directions = [d.name.lower() for d in study.directions]
    objectives = attrs.get(STUDY_OBJECTIVES)
    if not isinstance(objectives, list) or len(objectives) != len(directions):  # not made by cnnsearch
        objectives = [f"objective {i}" for i in range(len(directions))]
    goal = ", ".join(f"{name} ({direction})" for name, direction in zip(objectives, directions, strict=True))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    context = (f"Study `{study.study_name}`: dataset **{attrs.get('dataset', '?')}**, space "
               f"**{attrs.get('space_name', '?')}**, objectives {goal}. Updated {when}, after trial "
               f"{trial_number} completed. Full config: `cnnsearch best --study {shlex.quote(study.study_name)}`.")
    if len(directions) == 1:
        sections = _single_objective(best[0], objectives[0], context)
    else:
        sections = _pareto_front(best, objectives, context)
    while len(sections) > 2 and len("\n\n".join(sections)) > NOTE_MAX_CHARS:
        sections.pop()
    return "\n\n".join(sections)[:NOTE_MAX_CHARS]


def _single_objective(trial: FrozenTrial, objective: str, context: str) -> list[str]:
    attrs = trial.user_attrs
    rows = [(label, f"{format_value(attrs[key])}{unit}") for key, label, unit in _METRICS if key in attrs]
    if "device" in attrs:
        rows.append(("device", f"{attrs['device']} on {attrs.get('host', '?')}"))
    rows += [("note", note) for note in attrs.get(NOTES) or []]
    return [
        f"### Best so far: trial {trial.number}, {objective} {format_value(trial.value)}",
        context,
        _table(("metric", "value"), rows),
        "**Searched parameters**\n\n" + _table(("parameter", "value"), _params(trial)),
    ]


def _pareto_front(front: list[FrozenTrial], objectives: list[str], context: str) -> list[str]:
    shown = front[:FRONT_ROWS]
    more = f"\n\n{len(front) - len(shown)} more trials on the front." if len(front) > len(shown) else ""
    rows = [(str(t.number), *(format_value(v) for v in t.values), format_value(t.user_attrs.get(PARAMS)),
             ", ".join(f"{k}={v}" for k, v in _params(t))) for t in shown]
    return [
        f"### Pareto front: {len(front)} trial{'s' if len(front) != 1 else ''}",
        context,
        _table(("trial", *objectives, "parameters", "searched"), rows) + more,
    ]


def _params(trial: FrozenTrial) -> list[tuple[str, str]]:
    """The searched params as built: ``2 (asked 4)`` where the model builder fitted a value to the input."""
    out = []
    for name, built in sorted(built_params(trial).items()):
        asked = trial.params[name]
        out.append((name, format_value(built) + ("" if built == asked else f" (asked {format_value(asked)})")))
    return out


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
