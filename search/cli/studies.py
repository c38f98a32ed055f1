"""`cnnsearch status`, `best` and `studies`: what a storage's studies hold, as text or ``--json``."""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING, Any

from search.cli.flags import POSITIVE_INT, Command, print_json, storage_arg, study_arg

if TYPE_CHECKING:
    import optuna


def _open_study(args: argparse.Namespace):
    from storage import open_storage, resolve_storage_url
    from storage.studies import load_study

    storage = open_storage(resolve_storage_url(args.storage), heartbeat_interval=None, read_only=True)
    return load_study(storage, args.study)


def no_best(study: optuna.Study) -> str:
    """Why there is no best trial to show.

    None completed (and when models were refused before training: by which limit, and the smallest
    of them), or none met the constraints.
    """
    from storage.records import FAIL_MESSAGE, FAIL_REASON, PARAMS, STUDY_MAX_PARAMS
    from storage.studies import count_states

    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    if counts["COMPLETE"]:
        return (f"none of the {counts['COMPLETE']} completed trials meets the study's constraints "
                "(--max-params, --max-latency-ms)")
    ended = counts["PRUNED"] + counts["FAIL"]
    for reason in ("constraint", "memory"):
        refused = sorted((t for t in trials if t.user_attrs.get(FAIL_REASON) == reason),
                         key=lambda t: t.user_attrs.get(PARAMS, 0))
        if not refused:
            continue
        which = f"all {ended}" if len(refused) == ended else f"{len(refused)} of the {ended}"
        smallest = refused[0].user_attrs
        if reason == "constraint":
            return (f"no trial completed: --max-params {study.user_attrs.get(STUDY_MAX_PARAMS)} refused {which} "
                    f"models before training; the smallest has {smallest.get(PARAMS)} parameters (raise the "
                    "limit or make the space's models smaller)")
        return (f"no trial completed: {which} models were refused before training as too big for the worker's "
                f"memory; the smallest: {smallest.get(FAIL_MESSAGE)}")
    return "no trial completed yet"


METRIC_COLUMNS = (("params", "params", "params"), ("latency_ms", "latency_ms", "latency"))
"""The metrics ``best`` shows beside the objectives: (metric, column, the objective that is the same number)."""


def objectives_label(objectives: list[str], directions: list[str]) -> str:
    """``accuracy max, latency min``: what a Pareto front trades off (a user's ``module:function:max`` says it)."""
    return ", ".join(name if name.endswith((":max", ":min")) else f"{name} {d[:3]}"
                     for name, d in zip(objectives, directions, strict=True))


def _number(value: Any) -> str:
    """A value for people: floats to 4 significant digits, counts with thousands separators (exact in --json)."""
    if isinstance(value, bool) or value is None:
        return str(value) if value is not None else "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _key_params(rec: dict[str, Any]) -> str:
    """The trial's searched params as ``name=value``; a value the model builder changed shows what was built."""
    config = rec.get("config") or {}
    out = []
    for name, asked in rec["params"].items():
        built = config.get(name, asked)
        shown = _param(built) + ("" if built == asked else f" (asked {_param(asked)})")
        out.append(f"{name}={shown}")
    return " ".join(out)


def _aligned(cells: list[str], widths: list[int]) -> str:
    """One table line: rank and trial left-aligned, the numbers right-aligned."""
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def print_best(records: list[dict[str, Any]], objectives: list[str] | None = None,
               directions: list[str] | None = None, *, full: bool = False) -> None:
    """The best trial(s) as a table: rank, trial, objective value(s), params, latency; then key params and notes.

    Several objectives: the records are the Pareto front, and the title says so. ``full``
    adds each trial's whole config as YAML.
    """
    import yaml

    first = records[0]
    n = len(first["values"]) if "values" in first else 1
    objectives = objectives or (["value"] if n == 1 else [f"value {i}" for i in range(n)])
    goal = objectives_label(objectives, directions) if directions else ""
    if n > 1:
        print(f"Pareto front of {len(records)} trials" + (f" ({goal})" if goal else ""))
    else:  # which metric ranks them: the study's objective, e.g. val loss (min) or the user's own score
        print(f"{'best trial' if len(records) == 1 else f'top {len(records)} trials'}"
              + (f", ranked by {goal}" if goal else ""))
    # A metric that is also an objective is shown once, under the objective's name.
    shown = [(key, label) for key, label, objective in METRIC_COLUMNS if objective not in objectives]
    rows = []
    for rank, rec in enumerate(records, 1):
        m = rec["metrics"]
        values = rec["values"] if "values" in rec else [rec["value"]]
        rows.append([str(rank), f"#{rec['number']}", *(_number(v) for v in values),
                     *(_number(m.get(key)) for key, _ in shown), _number(m.get("train_seconds"))])
    header = ["rank", "trial", *objectives, *(label for _, label in shown), "train_s"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(_aligned(header, widths))
    indent = " " * (widths[0] + 2)
    for row, rec in zip(rows, records, strict=True):
        print(_aligned(row, widths))
        if rec["params"]:
            print(textwrap.fill(_key_params(rec), width=100, initial_indent=indent, subsequent_indent=indent + "  "))
        for note in rec["metrics"].get("notes") or []:
            print(f"{indent}note: {note}")
        if full:
            print(textwrap.indent(yaml.safe_dump(rec["config"], sort_keys=True).rstrip(), indent))


def add_status_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (documented in README)")
    return cmd_status


STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
"""Trial states in the order people read them: what is done, then what is to come."""


def _counts(counts: dict[str, int]) -> str:
    """``5 complete, 2 pruned, 1 running``: trials by state, the empty states left out."""
    return ", ".join(f"{counts[s]} {s.lower()}" for s in STATE_ORDER if counts.get(s)) or "no trials"


def cmd_status(args: argparse.Namespace) -> int:
    from reports.summary import status_record
    from storage.records import STUDY_SPACE_DERIVATION

    study = _open_study(args)
    rec = status_record(study)
    if args.json:
        print_json(rec)
        return 0
    budget = f" (budget {rec['budget']})" if rec.get("budget") else ""
    print(f"study {rec['study']} ({rec['dataset']}, space {rec['space']}): {_counts(rec['counts'])}{budget}; "
          f"elapsed {rec['elapsed_s']:.0f} s")
    for what, why in (study.user_attrs.get(STUDY_SPACE_DERIVATION) or {}).get("decisions", []):
        print(f"  {what}: {why}")  # how the auto space was derived, as `run` said it
    best, objectives = rec["best_value"], rec["objectives"]
    if best is None:
        print(f"best: {no_best(study)}")
    elif len(objectives) == 1:
        print(f"best: {objectives[0]} {_number(best)} (trial #{rec['best_trials'][0]})")
    else:
        trials = ", ".join(f"#{n}" for n in rec["best_trials"])
        print(f"best: Pareto front of {len(best)} trials ({objectives_label(objectives, rec['directions'])}): "
              f"{trials}")
    for r in rec["running"]:
        print(f"  running #{r['number']} on {r['worker']} ({r['device']}), started {r['started']}, "
              f"{r['epochs_done']} epochs done{_resume_point(r)}")
    for r in rec["waiting_resumable"]:
        print(f"  waiting #{r['number']}{_resume_point(r)}")
    for w in rec.get("workers", []):
        print(f"  worker {w['worker']} ({w['device']}): {_counts(w['trials'])}, "
              f"last heartbeat {w['last_heartbeat'] or '-'}")
    return 0


def _resume_point(rec: dict[str, Any]) -> str:
    """``, resumes after epoch 5`` (``, step 12 of epoch 6``): where a stopped trial would continue."""
    if rec["resumes_after"] is None:
        return ""
    step = f", step {rec['resumes_at_step']} of epoch {rec['resumes_after'] + 1}" if rec["resumes_at_step"] else ""
    return f", resumes after epoch {rec['resumes_after']}{step}"


def add_best_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--top", type=POSITIVE_INT, default=1, help="how many (single objective; several: the Pareto front)")
    p.add_argument("--full", action="store_true", help="each trial's whole config too")
    p.add_argument("--json", action="store_true", help="machine-readable output, values exact (documented in README)")
    return cmd_best


def cmd_best(args: argparse.Namespace) -> int:
    from reports.summary import best_records, objective_names

    study = _open_study(args)
    records = best_records(study, args.top)
    if args.json:
        print_json(records)
    elif not records:
        print(f"study {args.study!r}: {no_best(study)}")
    else:
        print_best(records, objective_names(study), [d.name.lower() for d in study.directions], full=args.full)
    return 0


def add_studies_args(p: argparse.ArgumentParser) -> Command:
    storage_arg(p)
    p.add_argument("--json", action="store_true")
    return cmd_studies


def cmd_studies(args: argparse.Namespace) -> int:
    from reports.summary import studies_records
    from storage import open_storage, resolve_storage_url

    storage = open_storage(resolve_storage_url(args.storage), heartbeat_interval=None, read_only=True)
    records = studies_records(storage)
    if args.json:
        print_json(records)
        return 0
    if not records:
        print("no studies in this storage")
    for r in records:
        if r["best_value"] is None:
            best = "no completed trial" if not r["complete"] else "none meets the constraints"
        elif r["pareto_front"] is not None:
            best = f"Pareto front of {r['pareto_front']} ({objectives_label(r['objectives'], r['directions'])})"
        else:
            best = f"best {r['objectives'][0]} {_number(r['best_value'])}"
        waiting = f", {r['waiting']} waiting" if r["waiting"] else ""
        print(f"{r['study']:<24} {r['dataset'] or '-':<12} {r['space'] or '-':<14} "
              f"{r['n_trials']:>4} ran{waiting}  {best}")
    return 0
