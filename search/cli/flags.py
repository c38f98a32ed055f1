"""What every command shares: the one-line argparse parser, number types, ``--storage``, output helpers.

Only argparse-level code: the command modules import it when the parser is built, so
``--help`` and bad flags answer before torch or optuna are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

Command = Callable[[argparse.Namespace], int]
"""A command's handler: the parsed arguments in, the exit code out."""

AddArgs = Callable[[argparse.ArgumentParser], Command]
"""Adds a command's arguments to its sub-parser and returns its handler."""


class Parser(argparse.ArgumentParser):
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


def study_name(text: str) -> str:
    """An argparse type: a study name :func:`storage.names.check_study_name` accepts."""
    # Imported here, when a --study is parsed, not when the parser is built: --help stays fast.
    from storage.errors import StudyNameError
    from storage.names import check_study_name

    try:
        return check_study_name(text)
    except StudyNameError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def study_arg(p: argparse.ArgumentParser) -> None:
    """``--study NAME``, required, checked before the command does anything."""
    p.add_argument("--study", required=True, type=study_name, help="study name")


def storage_arg(p: argparse.ArgumentParser) -> None:
    """``--storage``, resolved by :func:`storage.resolve_storage_url` in every command."""
    p.add_argument("--storage", help="study storage URL (default: $CNNSEARCH_STORAGE, else sqlite:///cnnsearch.db "
                                     "in the working directory); PostgreSQL: postgresql+psycopg://user@host/db "
                                     "with the password in $PGPASSWORD")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def usage(message: str) -> int:
    """Print a bad-input line as argparse would and return exit code 2."""
    print(f"cnnsearch: error: {message}", file=sys.stderr)
    return 2


class _AllowWeightDownloads(argparse.Action):
    """``--download-weights``: lets this process and the workers it starts download pretrained weights.

    An environment variable (read by ``search.trial.backbones.find_weights``) rather than an
    argument, because the permission belongs to the host, not to the trials' configs, and the
    worker processes started from here inherit it.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        os.environ["CNNSEARCH_DOWNLOAD_WEIGHTS"] = "1"
        setattr(namespace, self.dest, True)


def download_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--download-weights", action=_AllowWeightDownloads, nargs=0, default=False,
                   help="download missing pretrained weights into the torch hub cache (once per host)")
