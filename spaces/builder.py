"""Your own model: a space's ``model: {builder: ...}``, resolved to a function and the keys it declares.

A builder is named ``"my_pkg.nets:build"`` (an importable module and a function in it) or
``"nets.py:build"`` (a Python file, relative to the space file, and a function in it). It is
called as ``build(config, input_shape, num_classes, **builder_args)`` and returns an
``nn.Module`` (``search.trial.builders`` calls it and checks that).

The rule for its searchable keys: **every keyword-only argument (after ``*``) with a default**
is a key a space may search or fix, typed by its default (``True`` -> true/false, ``32`` ->
an integer, ``0.1`` -> a number, ``"relu"`` -> text, ``None`` -> any single value)::

    def build(config, input_shape, num_classes, *, channels=32, blocks=2, act="relu"): ...

A declared key may not share a name with a cnnsearch config key (``lr``, ``dropout``,
``width``...): those are searched as usual and the builder reads them from ``config``.

A builder is identified by its reference and the SHA-256 of its source file, which a study
records: a worker whose copy of the file differs is refused (:class:`spaces.errors.SpaceError`).
Nothing here imports torch; the builder's own module does, when it is imported.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spaces.errors import SpaceError
from spaces.references import ReferenceImportError, import_file, import_module, is_file_target, split_reference
from spaces.schema import CONFIG_KEYS, Key

KINDS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
"""The types a declared key's default may have (and ``None``: any single value)."""

EXAMPLE = 'model: {builder: "my_pkg.nets:build"} or model: {builder: "nets.py:build"}'


@dataclass(frozen=True)
class Builder:
    """A resolved builder: its reference, its source file and hash, the keys it declares.

    ``ref`` is how studies and recipes name it: a module reference as given, a file
    reference with the file's absolute path (so workers and ``train --config`` started
    elsewhere find the same file). ``keys`` maps each declared key to its :class:`Key`.
    """

    ref: str
    path: str
    sha256: str
    keys: dict[str, Key]
    function: Callable[..., Any]

    def defaults(self) -> dict[str, Any]:
        """Each declared key's default: what a trial passes for a key its space leaves out."""
        return {name: key.default for name, key in self.keys.items()}

    def identity(self) -> dict[str, str]:
        """What a study records to refuse a worker whose builder differs."""
        return {"builder": self.ref, "sha256": self.sha256}


def load_builder(ref: Any, where: str, base_dir: str | os.PathLike | None = None) -> Builder:
    """Resolve builder reference ``ref`` (a file reference relative to ``base_dir``), import it, read its keys.

    Raises :class:`SpaceError`, one line starting with ``where``, for a reference that is not
    ``module:function`` or ``file.py:function``, a module or file that cannot be imported, a
    function that is missing or does not take ``(config, input_shape, num_classes)``, or a
    declared key without a default, with a default of another type, or named like a config key.
    """
    parts = split_reference(ref)
    if parts is None:
        raise SpaceError(f"{where}: builder={ref!r} is not a builder reference; give {EXAMPLE}")
    target, name = parts
    if is_file_target(target):
        path = Path(base_dir or ".", os.path.expanduser(target)).resolve()
        module = _import_file(path, where)
        ref = f"{path}:{name}"
    else:
        module = _import_module(target, where)
        source = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
        if source is None:
            raise SpaceError(f"{where}: builder {ref!r}: module {target!r} has no source file to record; "
                             "give a module defined in a .py file")
        path = Path(source).resolve()
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise SpaceError(f"{where}: builder {ref!r}: {target} has no function {name!r}; "
                         f"its functions: {', '.join(found) or '(none)'}")
    keys = _declared_keys(function, ref, where)
    return Builder(ref=ref, path=str(path), sha256=_sha256(path, where), keys=keys, function=function)


def check_source(builder: Builder, recorded: Any, where: str) -> None:
    """Refuse ``builder`` when its source file's hash is not ``recorded`` (a study's or a recipe's)."""
    if recorded is not None and recorded != builder.sha256:
        raise SpaceError(f"{where}: builder {builder.ref}: this machine's {builder.path} is not the file the study "
                         f"was made with (sha256 {builder.sha256[:12]}..., the study's {str(recorded)[:12]}...); "
                         "give every machine the same copy of the builder")


def _import_module(target: str, where: str) -> Any:
    try:
        return import_module(target)
    except ReferenceImportError as exc:
        raise SpaceError(f"{where}: builder module {target!r} {exc}; "
                         "install it or put its folder on PYTHONPATH") from None


def _import_file(path: Path, where: str) -> Any:
    try:
        return import_file(path)
    except ReferenceImportError as exc:
        hint = ("; a file reference is relative to the space file (or absolute), e.g. nets.py:build"
                if str(exc) == "not found" else "")
        raise SpaceError(f"{where}: builder file {path} {exc}{hint}") from None


def _declared_keys(function: Callable[..., Any], ref: str, where: str) -> dict[str, Key]:
    takes = SpaceError(f"{where}: builder {ref!r} does not take (config, input_shape, num_classes); define it "
                       "as def build(config, input_shape, num_classes, *, your_key=default): ...")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise takes from None
    keys: dict[str, Key] = {}
    for param in signature.parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.default is inspect.Parameter.empty:
            raise SpaceError(f"{where}: builder {ref!r}: keyword argument {param.name!r} has no default; give it "
                             "one (the value a trial uses when its space does not set it)")
        if param.name in CONFIG_KEYS:
            raise SpaceError(f"{where}: builder {ref!r} declares {param.name!r}, a cnnsearch config key; rename "
                             f"the argument, or drop it and read config[{param.name!r}]")
        default = param.default
        kind = type(default) if default is not None else object
        if kind not in KINDS and kind is not object:
            raise SpaceError(f"{where}: builder {ref!r}: keyword argument {param.name}={default!r} is a "
                             f"{kind.__name__}; a searchable default is true/false, an integer, a number, "
                             "text or None")
        keys[param.name] = Key(default=default, kind=kind, doc=f"argument of builder {ref}",
                               nullable=default is None)
    try:
        signature.bind(None, None, None)  # after the loop: a keyword argument without default is named above
    except TypeError:
        raise takes from None
    return keys


def _sha256(path: Path, where: str) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SpaceError(f"{where}: builder file {path} cannot be read ({exc.strerror or exc})") from None
