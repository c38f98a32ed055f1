"""`cnnsearch spaces` and `cnnsearch datasets`: what can be searched, and on which data."""

from __future__ import annotations

import argparse
import sys

from search.cli.flags import Command
from spaces.derive import NAME as AUTO


def add_spaces_args(p: argparse.ArgumentParser) -> Command:
    sub = p.add_subparsers(dest="action")
    sub.add_parser("list", help="the presets (default)")
    show = sub.add_parser("show", help="print a preset or file as normalised YAML")
    show.add_argument("space")
    val = sub.add_parser("validate", help="check a space file; exit 2 with the reason if it is not valid")
    val.add_argument("file")
    return cmd_spaces


def cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import SpaceError, list_presets, load_space

    if args.action == "show" and args.space == AUTO:
        import inspect

        import spaces.derive

        print(inspect.getdoc(spaces.derive))  # its rules: the space itself exists only for given data and budget
    elif args.action == "show":
        print(load_space(args.space).to_yaml().rstrip())
    elif args.action == "validate":
        space = load_space(args.file)
        grid = ""
        try:
            grid = f", grid of {space.grid_size()} points"
        except SpaceError:
            grid = ", no finite grid"
        print(f"{args.file}: valid; {len(space.params)} searched and {len(space.fixed)} fixed parameters"
              f"{grid}; fingerprint {space.fingerprint()}")
        for warning in space.start_warnings():
            print(f"cnnsearch: warning: {warning}", file=sys.stderr)
    else:
        print(f"{AUTO:<16} derived from the data and the budget: what `cnnsearch run` searches without --space "
              f"(`cnnsearch spaces show {AUTO}`: the rules)")
        for name, description in list_presets():
            print(f"{name:<16} {description}")
    return 0


def add_datasets_args(p: argparse.ArgumentParser) -> Command:
    return cmd_datasets


def cmd_datasets(args: argparse.Namespace) -> int:
    from search.trial.datasets import describe_datasets

    for name, description in describe_datasets():
        print(f"{name:<18} {description}")
    return 0
