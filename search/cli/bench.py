"""`cnnsearch bench`: run the benchmark scripts of a source checkout and print one table.

The scripts live in ``benchmarks/`` next to the packages (they are not installed with
them); this command runs ``benchmarks/run_all.py`` with this interpreter, so it works from
a source checkout or an editable install and says so plainly anywhere else.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from search.cli.flags import Command
from search.trial.errors import CnnSearchError

RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


def add_bench_args(p: argparse.ArgumentParser) -> Command:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the short version: under 5 minutes on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="seconds per benchmark: checks that each one runs")
    p.add_argument("--only", help="comma-separated benchmark names (default: all of them)")
    p.add_argument("--show-output", action="store_true", help="print each benchmark's own tables too")
    return cmd_bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run_all.py`` with the same flags; its exit code is this command's."""
    if not RUN_ALL.is_file():
        raise CnnSearchError(f"cnnsearch bench: {RUN_ALL} not found; the benchmarks ship with the source "
                             "checkout, not the installed package: run this from a clone (pip install -e .)")
    command_line = [sys.executable, str(RUN_ALL)]
    if args.quick:
        command_line.append("--quick")
    if args.smoke:
        command_line.append("--smoke")
    if args.only:
        command_line += ["--only", args.only]
    if args.show_output:
        command_line.append("--show-output")
    return subprocess.call(command_line)
