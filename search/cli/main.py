"""The ``cnnsearch`` command line: the command table, the parser built from it, and ``main``.

Each command lives in one small module of this package (its arguments and its handler);
:data:`COMMANDS` lists them in the order ``--help`` shows. Heavy imports (torch, optuna)
happen inside the handlers, so ``--help`` and bad-input errors answer at once. Bad input of
any kind ends in one line on stderr and exit code 2; a study stopped by failing trials
exits 1; an interrupted run exits 130 (SIGINT) or 143 (SIGTERM), saying what became of its trial.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from search.cli import bench, catalog, dashboard, data, recipe, report, run, studies
from search.cli.flags import AddArgs, Parser, usage
from search.study.errors import TooManyFailures, WorkerStopped, user_errors

COMMANDS: dict[str, tuple[str, AddArgs]] = {
    "run": ("create or resume a study and run its trials with local workers", run.add_run_args),
    "worker": ("join an existing study from this machine and run its trials", run.add_worker_args),
    "status": ("trial counts, best value and running trials of a study", studies.add_status_args),
    "best": ("the best trial(s) of a study with config and metrics", studies.add_best_args),
    "studies": ("the studies in a storage", studies.add_studies_args),
    "spaces": ("list the built-in search spaces, show one, or validate a space file", catalog.add_spaces_args),
    "datasets": ("the datasets cnnsearch can load", catalog.add_datasets_args),
    "data": ("decode a dataset into the on-disk cache ahead of time; list or remove cached datasets",
             data.add_data_args),
    "report": ("write a study's report: DIR/index.html (self-contained), summary.md, trials.csv",
               report.add_report_args),
    "export": ("export a trial (default: the best) as a recipe for a training repo", recipe.add_export_args),
    "train": ("retrain a model from an exported recipe (same data, split and seed)", recipe.add_train_args),
    "dashboard": ("serve optuna-dashboard on the study storage, to watch studies live",
                  dashboard.add_dashboard_args),
    "bench": ("run the benchmarks (benchmarks/run_all.py) and print one table of their results",
              bench.add_bench_args),
}
"""Command name -> (one-line help, the function that adds its arguments and returns its handler)."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("cnnsearch")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cnnsearch", description="Hyperparameter and architecture search for CNN image classifiers, on Optuna.")
    parser.add_argument("--version", action="version", version=f"cnnsearch {_version()}")
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
        return usage(str(exc))
    except KeyboardInterrupt:
        print("cnnsearch: interrupted; the running trial was marked FAIL (reason: interrupted)", file=sys.stderr)
        return 130
    except WorkerStopped as stop:
        how = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {signal.Signals(stop.signum).name}"
        print(f"cnnsearch: {how}; the running trial was handed back to the study (waiting) for a worker to "
              "continue", file=sys.stderr)
        return 128 + stop.signum
