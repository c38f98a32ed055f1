"""A user's ``module:function`` or ``file.py:function``, imported: the one importer behind builders and scores.

A space's ``model: {builder: ...}`` (:mod:`spaces.builder`) and a user objective in
``--objectives`` (:mod:`search.trial.scores`) both name a function this way; they word their
own errors, this module does the importing. A file is imported under a name made from its
content's hash, so the same file is imported once per process, an edited one is a new
module, and two files both called ``nets.py`` do not replace each other.
Nothing here imports torch; the user's module does, when it is imported.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


class ReferenceImportError(Exception):
    """The module or file a reference names cannot be imported; the message says why (one line)."""


def is_file_target(target: str) -> bool:
    """Whether the part before ``:function`` names a Python file rather than a module."""
    return target.endswith(".py") or os.sep in target or "/" in target


def split_reference(ref: object) -> tuple[str, str] | None:
    """``"target:function"`` -> ``(target, function)``; None for anything else."""
    if not isinstance(ref, str):
        return None
    target, _, name = ref.rpartition(":")
    return (target, name) if target and name.isidentifier() else None


def import_module(target: str) -> ModuleType:
    """Import module ``target`` (dotted name) or raise :class:`ReferenceImportError`."""
    try:
        return importlib.import_module(target)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise ReferenceImportError(f"cannot be imported ({one_line(exc)})") from None


def import_file(path: Path) -> ModuleType:
    """Import the Python file at ``path`` (absolute) or raise :class:`ReferenceImportError`."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror or exc})"
        raise ReferenceImportError(reason) from None
    name = f"cnnsearch_user_{digest[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReferenceImportError("is not a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file may raise anything while it runs
        del sys.modules[name]
        raise ReferenceImportError(f"cannot be imported ({one_line(exc)})") from None
    return module


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (or just the type)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
