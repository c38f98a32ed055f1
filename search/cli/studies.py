"""`cnnsearch status`, `best` and `studies`: what a storage's studies hold, as text or ``--json``."""

from __future__ import annotations

import argparse
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


def print_best(records: list[dict[str, Any]]) -> None:
    """The best trial record(s) as text: value, headline metrics, then the config as YAML."""
    import yaml

    for rec in records:
        value = rec.get("value", rec.get("values"))
        m = rec["metrics"]
        print(f"\nbest trial #{rec['number']}: value {value}  (val_accuracy {m.get('val_accuracy')}, "
              f"params {m.get('params')}, latency {m.get('latency_ms', 0):.3f} ms/image, "
              f"trained {m.get('train_seconds', 0):.1f} s)")
        print(yaml.safe_dump(rec["config"], sort_keys=True).rstrip())


def add_status_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (documented in README)")
    return cmd_status


def cmd_status(args: argparse.Namespace) -> int:
    from reports.summary import status_record

    rec = status_record(_open_study(args))
    if args.json:
        print_json(rec)
        return 0
    counts = ", ".join(f"{n} {s.lower()}" for s, n in rec["counts"].items() if n)
    print(f"study {rec['study']} ({rec['dataset']}, space {rec['space']}): {counts or 'no trials'}; "
          f"best {rec['best_value']}; elapsed {rec['elapsed_s']:.0f} s")
    for r in rec["running"]:
        print(f"  running #{r['number']} on {r['worker']} ({r['device']}), started {r['started']}, "
              f"{r['epochs_done']} epochs done")
    for w in rec.get("workers", []):
        print(f"  worker {w['worker']} ({w['device']}): {w['trials']}, last heartbeat {w['last_heartbeat'] or '-'}")
    return 0


def add_best_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--top", type=POSITIVE_INT, default=1, help="how many (single objective; several: the Pareto front)")
    p.add_argument("--json", action="store_true", help="machine-readable output (documented in README)")
    return cmd_best


def cmd_best(args: argparse.Namespace) -> int:
    from reports.summary import best_records

    study = _open_study(args)
    records = best_records(study, args.top)
    if args.json:
        print_json(records)
    elif not records:
        print(f"study {args.study!r}: {no_best(study)}")
    else:
        print_best(records)
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
        print(f"{r['study']:<24} {r['dataset'] or '-':<12} {r['space'] or '-':<14} {r['n_trials']:>5} trials  "
              f"best {r['best_value']}")
    return 0
