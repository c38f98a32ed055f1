"""The study report: ``index.html`` (self-contained), ``summary.md`` and ``trials.csv``.

:func:`report_context` turns a study (finished or still running) into plain numbers and
embedded plots; the Jinja2 templates in ``reports/templates`` only lay them out.
:func:`write_report` writes the three files into a temporary folder and renames each
into place, so a reader never finds a half-written file, an older report stays whole
until the new one is complete, and other files in the folder are never touched.

The final evaluation (retraining the top configs and testing them) runs in ``search``,
which hands its results to :func:`report_context` as a plain dict (``final_eval``):
reports never trains a model.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from reports import plots
from reports.ablation import ablation, trial_accuracy
from reports.built import built_params, built_study
from reports.errors import ReportError
from reports.summary import format_value
from storage.names import check_study_name
from storage.records import (
    CLASSES,
    CONFIG,
    CURVES,
    FAIL_MESSAGE,
    FAIL_REASON,
    FAIL_REASONS,
    FOLD_VAL_ACCURACY,
    FOLD_VAL_ACCURACY_STD,
    FOLDS,
    INPUT_SHAPE,
    NOTES,
    SPLIT_SIZES,
    STUDY_BUDGET,
    STUDY_DATASET,
    STUDY_IMAGE_SIZE,
    STUDY_OBJECTIVES,
    STUDY_PRUNER,
    STUDY_SAMPLER,
    STUDY_SEED,
    STUDY_SPACE,
    STUDY_SPACE_FINGERPRINT,
    STUDY_SPACE_NAME,
    STUDY_VERSIONS,
    TRAIN_SECONDS,
)
from storage.staging import staged_files
from storage.studies import best_trials

log = logging.getLogger(__name__)

REPORTS_DIR = "cnnsearch-reports"
"""Where reports go, under the working directory, when ``--out`` is not given."""

TOP_K = 10
CURVES_TOP = 6
PARALLEL_PARAMS = 6
SMALL_VAL_SPLIT = 300
"""Fewer validation images than this: a warning that small accuracy differences are noise."""
FEW_TRIALS = 10

Accuracy = Callable[[FrozenTrial], float]
"""Validation accuracy of a completed trial, as the plots and importances read it."""

def default_out_dir(study_name: str) -> Path:
    """``cnnsearch-reports/<study>/`` under the working directory.

    Raises :class:`~storage.errors.StudyNameError` for a name that is not one folder name
    (empty, ``..``, holding ``/``), so a report never lands outside ``cnnsearch-reports/``.
    """
    return Path.cwd() / REPORTS_DIR / check_study_name(study_name)


def write_report(study: optuna.Study, out_dir: str | Path, *, final_eval: dict[str, Any] | None = None,
                 top_k: int = TOP_K, storage_label: str | None = None) -> Path:
    """Write ``index.html``, ``summary.md`` and ``trials.csv`` of ``study`` into ``out_dir``; return it.

    ``out_dir`` must be new, empty, or a previous report of this study; only the three
    files are replaced, anything else in it is left as it is. ``storage_label`` is shown
    as where the study lives (pass a masked URL). Raises :class:`ReportError` (one line)
    when ``out_dir`` cannot be written.
    """
    started = time.perf_counter()
    out = check_out_dir(out_dir, study.study_name)
    context = report_context(study, final_eval=final_eval, top_k=top_k, storage_label=storage_label)
    env = _environment()
    files: dict[str, str] = {
        "index.html": env.get_template("report.html.j2").render(**context),
        "summary.md": env.get_template("summary.md.j2").render(**context),
        "trials.csv": trials_frame(study).to_csv(index=False),
    }
    try:
        with staged_files(out) as staging:
            for name, text in files.items():
                staging.write_text(name, text)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out}: {exc.strerror or exc}; "
                          "choose another --out") from exc
    log.info("report of study %r written to %s in %.1f s", study.study_name, out, time.perf_counter() - started)
    return out


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial as one row: Optuna's ``trials_dataframe`` with the config flattened.

    The ``config`` user attr becomes one ``config_<key>`` column per key; other list or
    dict attrs (curves, notes) become JSON strings, so the CSV round-trips through
    pandas; ``duration`` is in seconds. Optuna's internal system attrs are left out.
    """
    df = study.trials_dataframe(multi_index=False)
    if df.empty:
        return pd.DataFrame(columns=["number", "state", "value"])
    df = df.drop(columns=[c for c in df.columns if c.startswith("system_attrs_")])
    if "user_attrs_config" in df.columns:
        configs = pd.json_normalize([c if isinstance(c, dict) else {} for c in df["user_attrs_config"]])
        configs.columns = [f"config_{c}" for c in configs.columns]
        configs.index = df.index
        df = pd.concat([df.drop(columns=["user_attrs_config"]), configs], axis=1)
    for column in df.columns:
        if df[column].map(lambda v: isinstance(v, (list, dict, tuple))).any():
            df[column] = df[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict, tuple)) else v)
    if "duration" in df.columns:
        df["duration"] = df["duration"].dt.total_seconds()
    return df


# --- what the report says -----------------------------------------------------------------------


def report_context(study: optuna.Study, *, final_eval: dict[str, Any] | None = None, top_k: int = TOP_K,
                   storage_label: str | None = None) -> dict[str, Any]:
    """Everything the templates show, as plain data and data-URI plots (see the section functions)."""
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    objectives = list(attrs.get(STUDY_OBJECTIVES) or (["accuracy"] if len(study.directions) == 1 else
                                                    [f"objective {i}" for i in range(len(study.directions))]))
    acc = _accuracy_target(objectives)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    n_val = (attrs.get(SPLIT_SIZES) or {}).get("sizes", {}).get("val")
    if attrs.get(FOLDS):  # --cv: every train + val image is validated on once per trial
        n_val = sum(attrs[FOLDS]["sizes"])
    classes = attrs.get(CLASSES) or []
    top = best_trials(study, top_k) if done else []
    if len(study.directions) > 1:
        top.sort(key=lambda t: (-acc(t), t.number))  # the Pareto front, most accurate first
    # Figures about what a parameter does read the values the models were built with: a depth
    # clamped to what the input holds is the same network as that depth, not a different point.
    built = built_study(study)
    importances = _importances(built, done, acc)
    context: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_label,
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "objectives": [{"name": n, "direction": d.name.lower()} for n, d in zip(objectives, study.directions,
                                                                                 strict=False)],
        "multi": len(study.directions) > 1,
        "ranked_by": _ranked_by(objectives, study.directions),
        "overview": _overview(study, trials, done, acc),
        "top": [{**_top_row(t), "value": t.values[0]} for t in top],
        "top_noise": _top_noise(top, n_val),
        "importances": importances,
        "plots": _plots(study, built, done, top, acc, importances, objectives),
        "ablation": ablation(built.get_trials(deepcopy=False)),
        "final": _final(final_eval, classes),
        "failures": _failures(trials),
        "warnings": _warnings(trials, done, n_val, classes),
    }
    return context


def _ranked_by(objectives: list[str], directions: list[optuna.study.StudyDirection]) -> dict[str, Any]:
    """Which metric orders the top trials: the first objective (``column`` when the table lacks it), or the front."""
    if len(directions) > 1:
        goal = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(objectives, directions, strict=False))
        return {"text": f"the Pareto front of {goal}, most accurate first", "column": None}
    name = objectives[0] if objectives else "value"
    return {"text": f"{name} ({directions[0].name.lower()})", "column": None if name == "accuracy" else name}


def _accuracy_target(objectives: list[str]) -> Accuracy:
    """Validation accuracy of a completed trial: its accuracy objective, else its ``val_accuracy`` attr."""
    if "accuracy" in objectives:
        index = objectives.index("accuracy")
        return lambda t: t.values[index]
    return lambda t: trial_accuracy(t) if trial_accuracy(t) is not None else float("nan")


def _overview(study: optuna.Study, trials: list[FrozenTrial], done: list[FrozenTrial], acc: Accuracy) -> dict[str, Any]:
    attrs = study.user_attrs
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    running = counts["RUNNING"] > 0
    first = min(starts) if starts else None
    last = (dt.datetime.now() if running or not ends else max(ends)) if first else None
    split = attrs.get(SPLIT_SIZES) or {}
    space = attrs.get(STUDY_SPACE) or {}
    # A space's params mix searched parameters (a dict with a "type") and fixed values.
    entries = space.get("params") or {}
    searched = {n: p for n, p in entries.items() if isinstance(p, dict) and "type" in p}
    overview: dict[str, Any] = {
        "dataset": attrs.get(STUDY_DATASET, "-"),
        "image_size": attrs.get(STUDY_IMAGE_SIZE),
        "input_shape": attrs.get(INPUT_SHAPE),
        "n_classes": len(attrs.get(CLASSES) or []),
        "split": {"sizes": split.get("sizes", {}), "seed": split.get("seed"),
                  "val_fraction": split.get("val_fraction"), "test_fraction": split.get("test_fraction"),
                  "fingerprint": split.get("fingerprint")},
        "space": {"name": attrs.get(STUDY_SPACE_NAME, "-"), "fingerprint": attrs.get(STUDY_SPACE_FINGERPRINT),
                  "description": space.get("description", ""),
                  "params": [{"name": n, "domain": _domain(p)} for n, p in searched.items()],
                  "fixed": {n: v for n, v in entries.items() if n not in searched}},
        "sampler": attrs.get(STUDY_SAMPLER, "-"), "pruner": attrs.get(STUDY_PRUNER, "-"), "seed": attrs.get(STUDY_SEED),
        "budget": attrs.get(STUDY_BUDGET),
        "counts": {k: v for k, v in counts.items() if v},
        "n_trials": len(trials),
        "running": running,
        "wall_seconds": (last - first).total_seconds() if first else 0.0,
        "compute_seconds": sum(float(t.user_attrs.get(TRAIN_SECONDS, 0.0)) for t in trials),
        "trial_seconds": sum(t.duration.total_seconds() for t in trials if t.duration is not None),
        "versions": attrs.get(STUDY_VERSIONS) or {},
        "best": None,
    }
    front = best_trials(study, 1) if done else []
    if front:
        best = front[0] if len(study.directions) == 1 else max(front, key=acc)
        finished_before = sum(1 for t in trials if t.datetime_complete and best.datetime_complete
                              and t.datetime_complete <= best.datetime_complete)
        overview["best"] = {
            "number": best.number,
            "value": best.value if len(study.directions) == 1 else best.values,
            "val_accuracy": trial_accuracy(best),
            "after_seconds": (best.datetime_complete - first).total_seconds() if best.datetime_complete else None,
            "finished_before": finished_before,
            "front_size": len(front),
        }
    return overview


def _domain(param: dict[str, Any]) -> str:
    """A space parameter in a few words: ``float [0.001, 0.03] log``, ``one of sgd, adam``."""
    kind = param.get("type")
    if kind == "bool":
        text = "true / false"
    elif kind == "categorical":
        text = "one of " + ", ".join(str(c) for c in param.get("choices", []))
    else:
        text = f"{kind} [{param.get('low')}, {param.get('high')}]"
        if param.get("log"):
            text += " log"
        if param.get("step") is not None:
            text += f" step {param['step']}"
    if param.get("when"):
        text += " when " + ", ".join(f"{k}={v}" for k, v in param["when"].items())
    return text


def _top_row(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    return {
        "number": t.number,
        "val_accuracy": trial_accuracy(t),
        "folds": _fold_spread(ua),
        "params": ua.get("params"), "flops": ua.get("flops"), "latency_ms": ua.get("latency_ms"),
        "train_seconds": ua.get("train_seconds"), "epochs": ua.get("epochs_run"),
        "searched": {name: _shown_param(value, t.params[name]) for name, value in built_params(t).items()},
        "notes": list(ua.get(NOTES) or []),
        "config": json.dumps(ua.get(CONFIG) or {}, indent=1, sort_keys=True),
    }


def _shown_param(built: Any, asked: Any) -> str:
    """A searched param as built; ``2 (asked 4)`` where the model builder changed it to fit the input."""
    shown = format_value(built)
    return shown if built == asked else f"{shown} (asked {format_value(asked)})"


def _fold_spread(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """A ``--cv`` trial's mean and spread over its folds (None for a trial of one val split)."""
    folds = attrs.get(FOLD_VAL_ACCURACY)
    if not folds or attrs.get(FOLD_VAL_ACCURACY_STD) is None:
        return None
    return {"mean": float(np.mean(folds)), "std": attrs[FOLD_VAL_ACCURACY_STD], "n": len(folds)}


def _top_noise(top: list[FrozenTrial], n_val: int | None) -> dict[str, Any] | None:
    """The noise margin near the best, and which top trials the val split cannot tell apart from the best."""
    accs = [(t.number, trial_accuracy(t)) for t in top if trial_accuracy(t) is not None]
    if not n_val or not accs:
        return None
    best = max(a for _, a in accs)
    margin = noise_margin(best, n_val)
    tied = [n for n, a in accs if best - a <= margin]
    return {"margin": margin, "tied": tied, "n_val": n_val, "best": best}


def noise_margin(accuracy: float, n_val: int) -> float:
    """2 standard errors of the difference of two accuracies near ``accuracy``, each measured on ``n_val`` images.

    The one noise threshold of the report: the top-trials table and the small-split warning both use it.
    """
    return 2 * math.sqrt(2 * max(accuracy * (1 - accuracy), 1 / n_val) / n_val)


def _importances(built: optuna.Study, done: list[FrozenTrial], acc: Accuracy) -> dict[str, Any]:
    """Optuna's fANOVA importances for val accuracy (seeded) on ``built`` (:func:`built_study`), or why none."""
    out: dict[str, Any] = {"values": {}, "evaluator": "fANOVA (optuna.importance, seed 0)", "note": ""}
    if len(done) < 2:
        out["note"] = f"needs at least 2 completed trials, the study has {len(done)}"
        return out
    try:
        values = optuna.importance.get_param_importances(
            built, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=acc)
    except (ValueError, RuntimeError) as exc:
        out["note"] = f"Optuna could not compute importances: {exc}"
        return out
    out["values"] = {k: float(v) for k, v in values.items()}
    if not values:
        out["note"] = "no parameter varied across the completed trials"
    return out


def _plots(study: optuna.Study, built: optuna.Study, done: list[FrozenTrial], top: list[FrozenTrial], acc: Accuracy,
           importances: dict[str, Any], objectives: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {"history": None, "importances": None, "parallel": None, "curves": None,
                                  "pareto": None}
    if not done:
        return out
    out["history"] = plots.history_plot(study, acc, "val accuracy")
    out["importances"] = plots.importance_plot(importances["values"], "fANOVA")
    ranked = list(importances["values"]) or sorted({p for t in done for p in t.params})
    if len(done) >= 2:
        out["parallel"] = plots.parallel_plot(built, ranked[:PARALLEL_PARAMS], acc, "val accuracy")
    out["curves"] = plots.curves_plot([
        (f"#{t.number} ({acc(t):.3f})", (t.user_attrs.get(CURVES) or {}).get("val_accuracy", []))
        for t in top[:CURVES_TOP]])
    if len(study.directions) > 1:
        out["pareto"] = plots.pareto_plot(study, objectives)
    return out


def _final(final_eval: dict[str, Any] | None, classes: list[str]) -> dict[str, Any] | None:
    """The final evaluation handed in by ``search``, summarised: mean and std over seeds, plots."""
    if not final_eval:
        return None
    metric_keys = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr", "top5_accuracy",
                   "train_seconds", "inference_ms")
    corruptions = final_eval.get("corruptions", {})
    models = []
    for model in final_eval.get("models", []):
        runs = model.get("runs", [])
        summary = {key: _mean_std([r.get(key) for r in runs]) for key in metric_keys}
        drops = {name: _mean_std([r["accuracy"] - r["corrupted"][name] for r in runs
                                  if name in r.get("corrupted", {})]) for name in corruptions}
        names = final_eval.get("classes") or classes
        matrix = model.get("confusion_matrix")
        models.append({
            "trial": model["trial"], "val_accuracy": model.get("val_accuracy"), "searched": model.get("params", {}),
            "n_runs": len(runs), "seeds": [r.get("seed") for r in runs],
            "summary": summary, "drops": drops,
            "confusion_matrix": matrix,
            "confusion_png": plots.confusion_plot(matrix, names, f"trial #{model['trial']}, summed over "
                                                  f"{len(runs)} seed(s)") if matrix else None,
        })
    return {**{k: v for k, v in final_eval.items() if k != "models"}, "models": models,
            "corruptions": corruptions}


def _mean_std(values: list[Any]) -> dict[str, float | int] | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not xs:
        return None
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else None, "n": len(xs)}


def _failures(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """Trials that did not complete, grouped by state and reason, with a few example messages."""
    groups: dict[tuple[str, str], list[FrozenTrial]] = {}
    for t in trials:
        if t.state in (TrialState.PRUNED, TrialState.FAIL):
            reason = t.user_attrs.get(FAIL_REASON) or ("pruned" if t.state == TrialState.PRUNED else "unknown")
            groups.setdefault((t.state.name, reason), []).append(t)
    out = []
    for (state, reason), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        messages = Counter(t.user_attrs.get(FAIL_MESSAGE, "") for t in members if t.user_attrs.get(FAIL_MESSAGE))
        out.append({"state": state, "reason": reason, "meaning": FAIL_REASONS.get(reason, ""), "n": len(members),
                    "trials": [t.number for t in members][:12],
                    "examples": [m for m, _ in messages.most_common(3)]})
    return out


def _warnings(trials: list[FrozenTrial], done: list[FrozenTrial], n_val: int | None,
              classes: list[str]) -> list[str]:
    """Plain statements of what the data cannot support."""
    out = []
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    if running:
        out.append(f"The study is still running ({running} trial(s) in progress): this report is a snapshot.")
    if not done:
        out.append("No trial has completed yet: there is nothing to compare.")
        return out
    accs = [a for a in (trial_accuracy(t) for t in done) if a is not None]
    if classes and accs and n_val:
        chance = 1 / len(classes)
        se = math.sqrt(chance * (1 - chance) / n_val)
        if max(accs) <= chance + 2 * se:
            out.append(f"The best val accuracy ({max(accs):.4f}) is within 2 standard errors of chance "
                       f"(1/{len(classes)} = {chance:.4f}, {n_val} val images): no trial has learned the task; "
                       "train longer, widen the space, or check the data.")
    if n_val and n_val < SMALL_VAL_SPLIT and accs:
        out.append(f"The val split has only {n_val} images: one image is {1 / n_val:.2%} of accuracy, and "
                   f"differences below the noise margin of {noise_margin(max(accs), n_val):.2%} "
                   "between two trials near the best can be noise (see Top trials).")
    if len(done) < FEW_TRIALS:
        out.append(f"Only {len(done)} trial(s) completed: importances and the ablation rest on very few "
                   "trials; read them as hints.")
    failed = sum(1 for t in trials if t.state == TrialState.FAIL)
    finished = sum(1 for t in trials if t.state.is_finished())
    if finished and failed / finished > 0.2:
        out.append(f"{failed} of {finished} finished trials failed: see Failures; the search explored less "
                   "of the space than its budget suggests.")
    return out


# --- writing --------------------------------------------------------------------------------------


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = format_value
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.2%}"
    env.filters["secs"] = _seconds
    env.filters["ms"] = lambda v: "-" if v is None else f"{v:.3f}"
    env.filters["pm"] = _plus_minus
    env.filters["ci"] = lambda ci: "" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
    env.filters["signed"] = lambda v: "-" if v is None else f"{v:+.4f}"
    env.filters["md"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.filters["shell"] = shlex.quote  # a name inside a command line the reader may paste
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _plus_minus(stats: dict[str, Any] | None, digits: int = 4) -> str:
    if not stats:
        return "-"
    if stats.get("std") is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def check_out_dir(out_dir: str | Path, study_name: str) -> Path:
    """The absolute report directory, once it is known the report of ``study_name`` can be written there.

    Checks what :func:`write_report` will need (a new or empty directory, or a previous
    report of this study, that can hold a temporary folder) without changing anything, so
    a long final evaluation is not run for a report that cannot be written. A folder with
    other files, or another study's report, is refused rather than mixed with this one.
    Raises :class:`ReportError`.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a directory; give a directory for the report")
    if out.is_dir():
        try:
            empty = not any(out.iterdir())
        except OSError as exc:
            raise ReportError(f"cannot read --out {out}: {exc.strerror or exc}; choose another --out") from exc
        owner = None if empty else _report_study(out)
        if not empty and owner is None:
            raise ReportError(f"--out {out} holds files that are not a cnnsearch report (no index.html written by "
                              "cnnsearch); give a new or empty directory, or a previous report of this study")
        if owner is not None and owner != study_name:
            raise ReportError(f"--out {out} holds the report of study {owner!r}, not of {study_name!r}; give a new "
                              "or empty directory, or a previous report of this study")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write the report to {out}: {existing} is not a writable directory; "
                          "choose another --out")
    return out


_TITLE = re.compile(r"<title>cnnsearch report: (.*?)</title>", re.S)


def _report_study(out: Path) -> str | None:
    """The study whose cnnsearch report ``out`` holds (the title of its ``index.html``), else None."""
    try:
        with (out / "index.html").open(encoding="utf-8", errors="replace") as f:
            head = f.read(4096)  # the title is in the first lines; the plots after it can be megabytes
    except OSError:
        return None
    match = _TITLE.search(head)
    if '<meta name="generator" content="cnnsearch">' not in head or match is None:
        return None
    return html.unescape(match.group(1))
