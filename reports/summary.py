"""What a study holds, as plain JSON-able records: status, best trials, the list of studies.

These records are the stable ``--json`` output of ``cnnsearch status``, ``best`` and
``studies`` (other tools parse them; the keys are documented in README.md), and the
tables of the report are built from the same records.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage.records import (
    BACKEND,
    CHECKPOINT_EPOCH,
    CHECKPOINT_STEP,
    CONFIG,
    DEVICE,
    GPU_IDS,
    HOST,
    LAST_HEARTBEAT,
    LIVE_CURVE,
    METRICS,
    PID,
    STUDY_BUDGET,
    STUDY_DATASET,
    STUDY_OBJECTIVES,
    STUDY_SPACE_NAME,
    WORKER,
)
from storage.studies import best_trials, count_states

SHOWN_METRICS = (*METRICS, DEVICE, HOST)
"""The ``metrics`` of a trial record: what it measured, and where it ran."""


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives in the user's words (``accuracy``, ``latency``...), one per direction."""
    names = study.user_attrs.get(STUDY_OBJECTIVES) or []
    if len(names) != len(study.directions):
        names = ["value"] if len(study.directions) == 1 else [f"value {i}" for i in range(len(study.directions))]
    return list(names)


def trial_record(trial: FrozenTrial, n_objectives: int) -> dict[str, Any]:
    """One trial as ``best --json`` shows it: number, value(s), params, config, metrics."""
    record: dict[str, Any] = {"number": trial.number}
    if n_objectives == 1:
        record["value"] = trial.value
    else:
        record["values"] = trial.values
    record["state"] = trial.state.name
    record["params"] = trial.params
    record["config"] = trial.user_attrs.get(CONFIG)
    record["metrics"] = {k: trial.user_attrs[k] for k in SHOWN_METRICS if k in trial.user_attrs}
    return record


def best_records(study: optuna.Study, top: int = 1) -> list[dict[str, Any]]:
    """``cnnsearch best --json``: a list of trial records (the Pareto front for several objectives)."""
    n = len(study.directions)
    return [trial_record(t, n) for t in best_trials(study, top)]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def status_record(study: optuna.Study) -> dict[str, Any]:
    """``cnnsearch status --json``: counts by state, best value, running trials, elapsed time, workers.

    Running and waiting trials with a checkpoint say where they would resume: ``resumes_after``
    (epochs done in the checkpoint, ``resumes_at_step`` batches into the next); a waiting retry of a
    dead worker's trial has that trial's checkpoint.
    """
    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    best = best_trials(study, 1)
    best_value = _best_value(study, best)
    running = [
        {"number": t.number, "host": t.user_attrs.get(HOST), "worker": t.user_attrs.get(WORKER),
         "pid": t.user_attrs.get(PID), "device": t.user_attrs.get(DEVICE),
         "started": _iso(t.datetime_start),
         # Multi-objective trials cannot store intermediate values: their curve is a user attr.
         "epochs_done": len(t.intermediate_values) or len(t.user_attrs.get(LIVE_CURVE, [])), **_resume_point(t)}
        for t in trials if t.state == TrialState.RUNNING
    ]
    resumable = [{"number": t.number, **_resume_point(t)} for t in trials
                 if t.state == TrialState.WAITING and CHECKPOINT_EPOCH in t.user_attrs]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if not starts:
        elapsed = 0.0
    else:
        last = dt.datetime.now() if running or not ends else max(ends)
        elapsed = max(0.0, (last - min(starts)).total_seconds())
    return {"study": study.study_name, "counts": counts, "best_value": best_value,
            "best_trials": [t.number for t in best], "objectives": objective_names(study), "running": running,
            "waiting_resumable": resumable,
            "elapsed_s": round(elapsed, 1), "directions": [d.name.lower() for d in study.directions],
            "dataset": study.user_attrs.get(STUDY_DATASET), "space": study.user_attrs.get(STUDY_SPACE_NAME),
            "budget": study.user_attrs.get(STUDY_BUDGET), "workers": worker_records(trials)}


def _resume_point(trial: FrozenTrial) -> dict[str, int | None]:
    """Where ``trial`` would continue from its latest checkpoint (None: it has none, it would start over)."""
    return {"resumes_after": trial.user_attrs.get(CHECKPOINT_EPOCH), "resumes_at_step": trial.user_attrs.get(
        CHECKPOINT_STEP)}


def _best_value(study: optuna.Study, best: list[FrozenTrial]) -> float | list[list[float]] | None:
    """The best value, or for several objectives the values of the Pareto front (None before any)."""
    if not best:
        return None
    return best[0].value if len(study.directions) == 1 else [t.values for t in best]


def worker_records(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """One record per worker that ran trials of the study, as ``status --json`` lists them under ``workers``.

    Each: worker (name), host, pid, device, gpu_ids (Ray workers), backend, trials (count by
    state), running (number of its running trial or None), last_heartbeat (local time, ISO)
    and heartbeat_age_s. A worker whose heartbeat is older than the grace period is dead;
    its running trial is failed and retried by the next worker that looks.
    """
    workers: dict[str, dict[str, Any]] = {}
    beats: dict[str, float] = {}
    for t in sorted(trials, key=lambda t: t.number):
        name = t.user_attrs.get(WORKER)
        if name is None or t.state == TrialState.WAITING:
            continue  # a queued retry still carries the attrs of the worker that died
        rec = workers.setdefault(name, {"worker": name, "trials": {}, "running": None})
        for key in (HOST, PID, DEVICE, GPU_IDS, BACKEND):
            rec[key] = t.user_attrs.get(key)
        rec["trials"][t.state.name] = rec["trials"].get(t.state.name, 0) + 1
        if t.state == TrialState.RUNNING:
            rec["running"] = t.number
        beat = t.user_attrs.get(LAST_HEARTBEAT)
        if beat is not None:
            beats[name] = max(beat, beats.get(name, beat))
    now = time.time()
    for name, rec in workers.items():
        beat = beats.get(name)
        rec["last_heartbeat"] = _iso(dt.datetime.fromtimestamp(beat)) if beat is not None else None
        rec["heartbeat_age_s"] = round(max(0.0, now - beat), 1) if beat is not None else None
    return sorted(workers.values(), key=lambda r: r["worker"])


def studies_records(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """``cnnsearch studies --json``: one record per study in the storage.

    ``n_trials`` counts the trials that ran or are running; ``waiting`` those enqueued that
    no worker has started yet. For several objectives ``best_value`` holds the values of the
    Pareto front and ``pareto_front`` its size.
    """
    out = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = count_states(trials)
        best = best_trials(study, 1)
        out.append({
            "study": frozen.study_name,
            "directions": [d.name.lower() for d in frozen.directions],
            "objectives": objective_names(study),
            "n_trials": len(trials) - counts[TrialState.WAITING.name],
            "waiting": counts[TrialState.WAITING.name],
            "counts": counts,
            "complete": counts[TrialState.COMPLETE.name],
            "best_value": _best_value(study, best),
            "pareto_front": len(best) if len(study.directions) > 1 else None,
            "dataset": frozen.user_attrs.get(STUDY_DATASET),
            "space": frozen.user_attrs.get(STUDY_SPACE_NAME),
            "created": _iso(min((t.datetime_start for t in trials if t.datetime_start), default=None)),
        })
    return out


def format_value(value: Any) -> str:
    """A metric for a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
