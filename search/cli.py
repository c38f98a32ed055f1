"""The ``cnnsearch`` command line: a thin layer over the Python API.

Each command is one small function taking the parsed arguments and returning an exit
code. Heavy imports (torch, optuna) happen inside the commands that need them, so
``--help`` and bad-input errors answer at once. Bad input of any kind ends in one line
on stderr and exit code 2; an interrupted run exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from search.errors import CnnSearchError, TooManyFailures, WorkerStopped, user_errors

if TYPE_CHECKING:
    from search.ray_backend import RayOptions

Command = Callable[[argparse.Namespace], int]
AddArgs = Callable[[argparse.ArgumentParser], Command]
COMMANDS: dict[str, tuple[str, AddArgs]] = {}


def command(name: str, help_text: str) -> Callable[[AddArgs], AddArgs]:
    """Register ``cnnsearch NAME``: the decorated function adds its arguments and returns its handler."""

    def register(add_args: AddArgs) -> AddArgs:
        COMMANDS[name] = (help_text, add_args)
        return add_args

    return register


class _Parser(argparse.ArgumentParser):
    """argparse, with bad flags answered in one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cnnsearch: error: {message} (see `{self.prog} --help`)\n")


def at_least(low: float, kind: type = int, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` that is at least ``low`` (more than ``low`` when ``strict``)."""
    what = "an integer" if kind is int else "a number"
    bound = f"more than {low:g}" if strict else f"at least {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}") from None
        if value != value or value < low or (strict and value == low):  # value != value: NaN
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


POSITIVE_INT = at_least(1)
NON_NEGATIVE_INT = at_least(0)
POSITIVE_FLOAT = at_least(0, float, strict=True)


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="study storage URL (default: $CNNSEARCH_STORAGE, else sqlite:///cnnsearch.db "
                                     "in the working directory); PostgreSQL: postgresql+psycopg://user@host/db "
                                     "with the password in $PGPASSWORD")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


# --- run -----------------------------------------------------------------------------------------

@command("run", "create or resume a study and run its trials with local workers")
def _run_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--study", required=True, help="study name")
    _storage_arg(p)
    p.add_argument("--space", default="default", help="a preset name (see `cnnsearch spaces`) or a YAML file")
    p.add_argument("--dataset", default="mnist5k", help="dataset name (see `cnnsearch datasets`)")
    p.add_argument("--data-dir", help="where torchvision datasets live")
    p.add_argument("--download", action="store_true", help="download a torchvision dataset into --data-dir first")
    p.add_argument("--image-size", type=POSITIVE_INT, help="resize imagefolder images to this side")
    p.add_argument("--sampler", default=None,
                   help="auto|tpe|random|grid|gp|cmaes|qmc|nsga2 (default auto: GP for one objective over "
                        "at most 12 searched parameters, else TPE)")
    p.add_argument("--pruner", default=None, help="none|median|sha|hyperband (default hyperband)")
    p.add_argument("--objectives", default="accuracy",
                   help="comma-separated: accuracy[,latency|params|flops]")
    p.add_argument("--trials", type=POSITIVE_INT, help="trial budget of the whole study (all workers together)")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, help="stop starting new trials after this many seconds")
    p.add_argument("--trial-timeout", type=POSITIVE_FLOAT, help="prune a trial that trains longer than this (seconds)")
    p.add_argument("--jobs", type=int, help="local worker processes (default 1; same as --workers)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of the sampler and the trials")
    p.add_argument("--split-seed", type=NON_NEGATIVE_INT, default=0, help="seed of the train/val/test split")
    p.add_argument("--warm-start", metavar="STUDY", help="enqueue the best configs of this study first")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--max-params", type=POSITIVE_INT, help="constraint: at most this many parameters")
    p.add_argument("--max-latency-ms", type=POSITIVE_FLOAT, help="constraint: at most this latency (ms/image)")
    p.add_argument("--max-failures", type=POSITIVE_INT, default=5, help="stop after this many failed trials in a row")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each completed trial's weights and learning curve in the artifact store "
                        "(`cnnsearch export` then ships the weights with the recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _backend_args(p)
    return cmd_run


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workers: local processes or Ray tasks")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: Ray tasks, each a worker with its own GPU share")
    g.add_argument("--workers", type=int, help="how many workers (default 1)")
    g.add_argument("--ray-address", help="Ray cluster to join: auto or HOST:PORT (default: a local cluster for this "
                                         "command, shut down at its end)")
    g.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per Ray worker; 0.5 puts two on a GPU (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-trial", type=float,
                   help="CPUs (and training threads) per Ray worker (default 1)")


def _worker_count(args: argparse.Namespace) -> int:
    jobs = getattr(args, "jobs", None)
    if args.workers is not None and jobs is not None and args.workers != jobs:
        raise CnnSearchError(f"--workers {args.workers} and --jobs {jobs} disagree; give one of them")
    count = args.workers if args.workers is not None else (jobs if jobs is not None else 1)
    if count < 1:
        flag = "--workers" if args.workers is not None else "--jobs"
        raise CnnSearchError(f"{flag} must be at least 1, got {count}")
    return count


def _ray_options(args: argparse.Namespace, workers: int) -> RayOptions | None:
    """The Ray settings of ``--backend ray`` (None for local); Ray flags without it are refused."""
    if args.backend != "ray":
        for flag, value in (("--ray-address", args.ray_address), ("--gpus-per-trial", args.gpus_per_trial),
                            ("--cpus-per-trial", args.cpus_per_trial)):
            if value is not None:
                raise CnnSearchError(f"{flag} needs --backend ray (got --backend {args.backend})")
        return None
    if args.device not in ("auto", "cpu"):
        raise CnnSearchError(f"--device {args.device!r} with --backend ray: Ray assigns the GPUs; use auto or cpu")
    from search.ray_backend import RayOptions  # does not import Ray itself

    return RayOptions(workers=workers, gpus_per_trial=args.gpus_per_trial, address=args.ray_address,
                      cpus_per_trial=1.0 if args.cpus_per_trial is None else args.cpus_per_trial)


def cmd_run(args: argparse.Namespace) -> int:
    from search.samplers import DEFAULT_PRUNER, DEFAULT_SAMPLER
    from search.study import StudySpec
    from spaces import load_space

    workers = _worker_count(args)
    ray = _ray_options(args, workers)
    if args.trials is None and args.timeout is None and args.sampler != "grid":
        return _usage("give --trials N (study-wide budget) or --timeout SECONDS, or both")
    space = load_space(args.space)
    spec = StudySpec(
        space=space, dataset=args.dataset, objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
        sampler=args.sampler or DEFAULT_SAMPLER, pruner=args.pruner or DEFAULT_PRUNER, seed=args.seed,
        image_size=args.image_size, split_seed=args.split_seed, data_dir=args.data_dir,
        max_params=args.max_params, max_latency_ms=args.max_latency_ms, trial_timeout=args.trial_timeout,
        max_failures=args.max_failures, budget=args.trials, keep_checkpoints=args.keep_checkpoints,
    )
    if spec.sampler == "grid":
        space.grid()  # refuses a space without a finite grid before anything is created
    from reports.summary import best_records
    from search.run import run_study
    from search.worker import stop_on_sigterm

    stop_on_sigterm()
    result = run_study(spec, args.study, args.storage, timeout=args.timeout, jobs=workers,
                       device=args.device, warm_start=args.warm_start, progress=not args.no_progress,
                       download=args.download, ray=ray)
    import optuna

    from storage import mask_url, open_storage

    study = optuna.load_study(study_name=args.study, storage=open_storage(result.storage_url))
    counts = result.counts
    print(f"study {args.study!r} in {mask_url(result.storage_url)}: {counts['COMPLETE']} complete, "
          f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['WAITING']} waiting "
          f"({result.wall_seconds:.0f} s)")
    if len(result.workers) > 1:
        for w in result.workers:
            print(f"  worker {w['worker']}: {w.get('counts') or w.get('error')} ({w.get('stopped', 'stopped')})")
    best = best_records(study, 1)
    if not best:
        print(_no_best(counts["COMPLETE"]))
        return 0
    _print_best_text(best)
    print(f"\nreport: cnnsearch report --study {args.study}   (writes cnnsearch-reports/{args.study}/)")
    return 0


def _no_best(complete: int) -> str:
    """Why there is no best trial to show: nothing completed, or nothing met the constraints."""
    if not complete:
        return "no trial completed yet"
    return (f"none of the {complete} completed trials meets the study's constraints "
            "(--max-params, --max-latency-ms)")


def _print_best_text(records: list[dict[str, Any]]) -> None:
    import yaml

    for rec in records:
        value = rec.get("value", rec.get("values"))
        m = rec["metrics"]
        print(f"\nbest trial #{rec['number']}: value {value}  (val_accuracy {m.get('val_accuracy')}, "
              f"params {m.get('params')}, latency {m.get('latency_ms', 0):.3f} ms/image, "
              f"trained {m.get('train_seconds', 0):.1f} s)")
        print(yaml.safe_dump(rec["config"], sort_keys=True).rstrip())


# --- worker --------------------------------------------------------------------------------------

@command("worker", "join an existing study from this machine and run its trials")
def _worker_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--trials", type=POSITIVE_INT, help="stop after this many trials of this worker")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, help="stop starting new trials after this many seconds")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--threads", type=POSITIVE_INT, help="CPU threads for training")
    p.add_argument("--data-dir", help="where this machine keeps the study's torchvision dataset")
    p.add_argument("--name", help="worker name shown in `cnnsearch status` (default host:pid)")
    _backend_args(p)
    return cmd_worker


def cmd_worker(args: argparse.Namespace) -> int:
    from search.worker import stop_on_sigterm, worker_loop
    from storage import resolve_storage_url

    workers = _worker_count(args)
    ray = _ray_options(args, workers)
    if ray is None and workers > 1:
        return _usage(f"--workers {workers} needs --backend ray; or start {workers} `cnnsearch worker` processes")
    stop_on_sigterm()
    if ray is not None:
        return _ray_workers(args, ray)
    summary = worker_loop(resolve_storage_url(args.storage), args.study, device=args.device,
                          threads=args.threads, max_trials=args.trials, timeout=args.timeout,
                          data_dir=args.data_dir, worker_name=args.name)
    print(f"worker {summary.worker} on {summary.device}: {summary.counts} ({summary.stopped_because})")
    return 0


def _ray_workers(args: argparse.Namespace, ray: RayOptions) -> int:
    """``cnnsearch worker --backend ray``: Ray tasks join the study (``--trials`` counts per worker)."""
    for flag, value in (("--name", args.name), ("--threads", args.threads)):
        if value is not None:
            hint = "each Ray worker is named host:pid" if flag == "--name" else "use --cpus-per-trial"
            raise CnnSearchError(f"{flag} does not apply to --backend ray: {hint}")
    from search.ray_backend import run_ray_workers
    from search.run import _raise_worker_errors
    from storage import resolve_storage_url

    results = run_ray_workers(resolve_storage_url(args.storage), args.study, ray, device=args.device,
                              timeout=args.timeout, max_trials=args.trials, data_dir=args.data_dir)
    for w in results:
        print(f"worker {w['worker']} on {w.get('device', '?')} (Ray GPUs {w.get('gpu_ids') or 'none'}): "
              f"{w.get('counts') or w.get('error')} ({w.get('stopped', 'stopped')})")
    _raise_worker_errors(results)
    return 0


# --- status / best / studies ------------------------------------------------------------------------

def _open_study(args: argparse.Namespace):
    from reports.summary import load_study
    from storage import open_storage, resolve_storage_url

    return load_study(open_storage(resolve_storage_url(args.storage), heartbeat_interval=None), args.study)


@command("status", "trial counts, best value and running trials of a study")
def _status_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (documented in README)")
    return cmd_status


def cmd_status(args: argparse.Namespace) -> int:
    from reports.summary import status_record

    rec = status_record(_open_study(args))
    if args.json:
        _print_json(rec)
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


@command("best", "the best trial(s) of a study with config and metrics")
def _best_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--top", type=POSITIVE_INT, default=1, help="how many (single objective; several: the Pareto front)")
    p.add_argument("--json", action="store_true", help="machine-readable output (documented in README)")
    return cmd_best


def cmd_best(args: argparse.Namespace) -> int:
    from reports.summary import best_records
    from search.progress import study_counts

    study = _open_study(args)
    records = best_records(study, args.top)
    if args.json:
        _print_json(records)
    elif not records:
        print(f"study {args.study!r}: {_no_best(study_counts(study)['COMPLETE'])}")
    else:
        _print_best_text(records)
    return 0


@command("studies", "the studies in a storage")
def _studies_args(p: argparse.ArgumentParser) -> Command:
    _storage_arg(p)
    p.add_argument("--json", action="store_true")
    return cmd_studies


def cmd_studies(args: argparse.Namespace) -> int:
    from reports.summary import studies_records
    from storage import open_storage, resolve_storage_url

    records = studies_records(open_storage(resolve_storage_url(args.storage), heartbeat_interval=None))
    if args.json:
        _print_json(records)
        return 0
    if not records:
        print("no studies in this storage")
    for r in records:
        print(f"{r['study']:<24} {r['dataset'] or '-':<12} {r['space'] or '-':<14} {r['n_trials']:>5} trials  "
              f"best {r['best_value']}")
    return 0


# --- spaces / datasets ----------------------------------------------------------------------------

@command("spaces", "list the built-in search spaces, show one, or validate a space file")
def _spaces_args(p: argparse.ArgumentParser) -> Command:
    sub = p.add_subparsers(dest="action")
    sub.add_parser("list", help="the presets (default)")
    show = sub.add_parser("show", help="print a preset or file as normalised YAML")
    show.add_argument("space")
    val = sub.add_parser("validate", help="check a space file; exit 2 with the reason if it is not valid")
    val.add_argument("file")
    return cmd_spaces


def cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import list_presets, load_space

    if args.action == "show":
        print(load_space(args.space).to_yaml().rstrip())
    elif args.action == "validate":
        space = load_space(args.file)
        grid = ""
        try:
            grid = f", grid of {space.grid_size()} points"
        except user_errors():
            grid = ", no finite grid"
        print(f"{args.file}: valid; {len(space.params)} searched and {len(space.fixed)} fixed parameters"
              f"{grid}; fingerprint {space.fingerprint()}")
    else:
        for name, description in list_presets():
            print(f"{name:<16} {description}")
    return 0


@command("datasets", "the datasets cnnsearch can load")
def _datasets_args(p: argparse.ArgumentParser) -> Command:
    return cmd_datasets


def cmd_datasets(args: argparse.Namespace) -> int:
    from search.datasets import describe_datasets

    for name, description in describe_datasets():
        print(f"{name:<18} {description}")
    return 0


# --- main ----------------------------------------------------------------------------------------

def _usage(message: str) -> int:
    print(f"cnnsearch: error: {message}", file=sys.stderr)
    return 2


COMMAND_MODULES = ("search.cli_reports", "search.cli_dashboard", "search.cli_bench")
"""Modules that register further commands; imported when the parser is built (they import only argparse-level code)."""


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = _Parser(
        prog="cnnsearch", description="Hyperparameter and architecture search for CNN image classifiers, on Optuna.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=add_args(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, its one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except TooManyFailures as exc:
        print(f"cnnsearch: {exc}", file=sys.stderr)
        return 1
    except user_errors() as exc:
        return _usage(str(exc))
    except KeyboardInterrupt:
        print("cnnsearch: interrupted; the running trial was marked FAIL (reason: interrupted)", file=sys.stderr)
        return 130
    except WorkerStopped:
        print("cnnsearch: stopped by SIGTERM; the running trial was marked FAIL (reason: interrupted)",
              file=sys.stderr)
        return 143


if __name__ == "__main__":
    # Under `python -m search.cli` this file runs as `__main__`, while the command modules
    # register into `search.cli`: call that module's main so every command is there.
    from search.cli import main as _main

    sys.exit(_main())
