"""Search spaces from YAML: the built-in presets and user files, validated once.

A space file is a mapping::

    description: one line shown by `cnnsearch spaces`       # optional
    full_grid: true      # optional: meant to run every grid point (`--sampler auto` runs the grid)
    params:
      lr: {type: float, low: 1.0e-4, high: 0.1, log: true}  # optional step (not with log)
      batch_size: {type: categorical, choices: [32, 64, 128]}
      depth: {type: int, low: 1, high: 4}                   # optional log, step
      batch_norm: {type: bool}
      momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
      epochs: 3                                             # fixed; also {type: fixed, value: 3}
    model: {builder: "nets.py:build"}   # optional: your own model (spaces/builder.py); its keys join params
    start: [{lr: 0.003, depth: 2}]      # optional: points tried first, never pruned (params left out are drawn)
    low_cost: {epochs: 2}               # optional: the first drawn trial's cost-related values

Everything that could go wrong is found here, before a study starts: each problem is a
:class:`SpaceError` with one line naming the file (or preset), the parameter and key, the
bad value and what would be accepted.
"""

from __future__ import annotations

import difflib
import graphlib
import importlib.resources
import itertools
import math
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from spaces.builder import Builder, load_builder
from spaces.errors import SpaceError
from spaces.schema import CONFIG_KEYS, DEFAULT_CONFIG, INERT, SCALARS, Key, inert_message, unknown_key_message
from spaces.space import Param, Space, dependency_order, same_value, step_count

TOP_KEYS = ("description", "params", "start", "low_cost", "full_grid", "model")
MODEL_KEYS = ("builder",)
BUILDER_KEYS = ("builder", "builder_args")
"""Config keys only a space's `model: {builder: ...}` sets (which also replaces the `model` key's family)."""
SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "bool": ("type", "when"),
    "fixed": ("type", "value"),
}
MAX_CHECKED_VALUES = 10_000  # an int range over a key with a fixed set of choices is checked value by value
MAX_YAML_SIZE = 1_000_000
"""Largest YAML document read, in values plus characters after aliases are expanded (space files are ~2 KB)."""

# Text PyYAML leaves as a string although a user meant a number: 1e-4, 1.0e4 (YAML 1.1 floats need
# a dot and a signed exponent).
_EXPONENT_TEXT = re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*|\.\d+)[eE][-+]?\d+")

EXAMPLE = "params: {lr: {type: float, low: 1.0e-4, high: 0.1, log: true}}"
BUILDER_EXAMPLE = 'model: {builder: "my_pkg.nets:build"} or model: {builder: "nets.py:build"}'


def preset_names() -> list[str]:
    """The names of the presets installed in ``spaces/presets/``, sorted."""
    folder = importlib.resources.files("spaces.presets")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every installed preset, sorted by name."""
    return [(name, load_space(name).description) for name in preset_names()]


def load_space(ref: str | os.PathLike, strict: bool = True) -> Space:
    """The validated space named by ``ref``: a preset name (``"default"``) or a YAML file path.

    With ``strict`` every parameter must be a config key of :mod:`spaces.schema`; without,
    unknown names are allowed (benchmark spaces) and known ones are still checked.
    Raises :class:`SpaceError` for an unknown preset, a missing file or a bad definition.
    """
    text = os.fspath(ref)
    looks_like_path = isinstance(ref, os.PathLike) or text.endswith((".yaml", ".yml")) or os.sep in text
    if not looks_like_path and text in preset_names():
        source = text
        content = importlib.resources.files("spaces.presets").joinpath(f"{text}.yaml").read_text("utf-8")
        return parse_space(load_yaml(content, source), source=source, strict=strict, name=text)
    path = Path(text)
    if not path.is_file():
        what = "space file not found" if looks_like_path or path.exists() else "unknown space"
        raise SpaceError(f"{text}: {what}{_hint(text, preset_names())}; give a path to a .yaml file "
                         f"or a preset name: {', '.join(preset_names())}")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"{text}: cannot read the space file ({err}); give a readable UTF-8 YAML file"
                         ) from None
    return parse_space(load_yaml(content, text), source=text, strict=strict, name=path.stem,
                       base_dir=path.parent)


def parse_space(data: Mapping | None, source: str = "<space>", strict: bool = True, *,
                name: str | None = None, base_dir: str | os.PathLike | None = None) -> Space:
    """Validate an already loaded space definition (the YAML mapping) and build the :class:`Space`.

    ``source`` names the definition in error messages; ``name`` defaults to its file stem;
    a builder file (``model: {builder: nets.py:build}``) is found relative to ``base_dir``.
    """
    if name is None:
        name = Path(source).stem if source.endswith((".yaml", ".yml")) else source
    if data is None:
        raise SpaceError(f"{source}: the space is empty; a space is a mapping with a `params:` section, "
                         f"e.g. {EXAMPLE}")
    if not isinstance(data, Mapping):
        raise SpaceError(f"{source}: the top level is a {type(data).__name__} ({_preview(data)}); "
                         f"a space is a mapping with a `params:` section, e.g. {EXAMPLE}")
    for key in data:
        if key not in TOP_KEYS:
            raise SpaceError(f"{source}: unknown top-level key {key!r}{_hint(key, TOP_KEYS)}; "
                             f"accepted keys: {', '.join(TOP_KEYS)}")
    if "params" not in data:
        raise SpaceError(f"{source}: no `params:` section; a space lists its parameters under `params:`, "
                         f"e.g. {EXAMPLE}")
    raw_params = data["params"]
    if not isinstance(raw_params, Mapping):
        raise SpaceError(f"{source}: params is a {type(raw_params).__name__} ({_preview(raw_params)}); "
                         f"it must be a mapping of parameter name to spec, e.g. {EXAMPLE}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SpaceError(f"{source}: description={_preview(description)} is not text; give one line of text")
    full_grid = data.get("full_grid", False)
    if not isinstance(full_grid, bool):
        raise SpaceError(f"{source}: full_grid={_preview(full_grid)} is not true or false; give full_grid: true "
                         "for a space meant to run every point of its grid")

    builder = _parse_model(source, data.get("model"), base_dir)
    keys = {**CONFIG_KEYS, **builder.keys} if builder else CONFIG_KEYS
    params: dict[str, Param] = {}
    fixed: dict[str, Any] = {}
    for param_name, spec in raw_params.items():
        if not isinstance(param_name, str) or not param_name:
            raise SpaceError(f"{source}: parameter name {param_name!r} is not a name; "
                             "parameter names are non-empty text, e.g. lr")
        _check_name(source, param_name, builder, strict)
        ctx = _Context(source, param_name, keys.get(param_name))
        if isinstance(spec, Mapping) and spec.get("type") != "fixed":
            params[param_name] = _parse_param(ctx, spec)
        else:
            fixed[param_name] = _parse_fixed(ctx, spec)

    for param in params.values():
        _check_conditions(_Context(source, param.name, keys.get(param.name)), param, params, fixed)
    if strict:
        _check_combinations(source, params, fixed, builder)
    deps = {n: set(p.when) - set(fixed) for n, p in params.items()}
    try:
        graphlib.TopologicalSorter(deps).prepare()
    except graphlib.CycleError as err:
        cycle = list(reversed(err.args[1]))
        raise SpaceError(f"{source}: param {cycle[0]!r}: condition cycle {' -> '.join(cycle)} (each `when` "
                         "names the next); a condition may only name parameters that do not depend on it"
                         ) from None
    ordered = {n: params[n] for n in dependency_order(list(params), deps)}
    start = _parse_start(source, data.get("start"), ordered)
    low_cost = _parse_low_cost(source, data.get("low_cost"), ordered)
    space = Space(name=name, source=source, description=" ".join(description.split()), params=ordered,
                  fixed=fixed, strict=strict, start=start, full_grid=full_grid, builder=builder,
                  low_cost=low_cost)
    if full_grid:
        space.grid_size()  # a full grid needs a finite one: refused here, named, before any study
    return space


def _parse_model(source: str, raw: Any, base_dir: str | os.PathLike | None) -> Builder | None:
    """``model: {builder: REF}``: your own model instead of the built-in family (:mod:`spaces.builder`)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "builder" not in raw:
        raise SpaceError(f"{source}: model={_preview(raw)} does not name a builder; give {BUILDER_EXAMPLE} "
                         "(a built-in family is chosen with params: {model: resnet18})")
    for key in raw:
        if key not in MODEL_KEYS:
            raise SpaceError(f"{source}: model: unknown key {key!r}{_hint(key, MODEL_KEYS)}; "
                             f"accepted keys: {', '.join(MODEL_KEYS)}")
    return load_builder(raw["builder"], f"{source}: model", base_dir)


def _check_name(source: str, name: str, builder: Builder | None, strict: bool) -> None:
    """Refuse a parameter the trainer does not know, or one a builder space sets itself."""
    if name in BUILDER_KEYS:
        raise SpaceError(f"{source}: params: {name!r} is set by the space's top-level `model: {{builder: ...}}`, "
                         f"not as a parameter; e.g. {BUILDER_EXAMPLE}")
    if builder is None:
        if strict and name not in CONFIG_KEYS:
            raise SpaceError(unknown_key_message(name, f"{source}: params"))
        return
    if name == "model":
        raise SpaceError(f"{source}: params: {name!r} is set by `model: {{builder: ...}}` (the builder is the "
                         "model); drop it from params")
    if name not in CONFIG_KEYS and name not in builder.keys:
        declared = ", ".join(builder.keys) or "(none: give it keyword-only arguments with defaults)"
        raise SpaceError(f"{source}: params: unknown parameter {name!r}{_hint(name, [*builder.keys, *CONFIG_KEYS])}; "
                         f"builder {builder.ref} declares: {declared}; the other parameters are "
                         "cnnsearch's config keys (spaces/schema.py)")


def _parse_start(source: str, raw: Any, params: Mapping[str, Param]) -> list[dict[str, Any]]:
    """``start:`` a list of points (searched param -> value) tried first, before the sampler's own.

    Like Ray Tune's ``points_to_evaluate``: a known-good configuration gives the sampler a
    strong first result. A point may leave params out; the sampler fills them in.
    """
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(p, Mapping) for p in raw):
        raise SpaceError(f"{source}: start={_preview(raw)} is not a list of points; give a list of mappings "
                         "of searched parameter to value, e.g. start: [{lr: 0.01, depth: 2}]")
    return [_parse_point(f"{source}: start[{i}]", point, params) for i, point in enumerate(raw)]


def _parse_low_cost(source: str, raw: Any, params: Mapping[str, Param]) -> dict[str, Any]:
    """``low_cost:`` values of cost-related parameters (epochs, width, ...) for the study's first drawn trial.

    FLAML's ``low_cost_partial_config`` (Wu et al., "Frugal optimization for cost-related
    hyperparameters", AAAI 2021): a search that starts from its cheap end has a first result
    early and spends little on a first trial no pruner can stop yet (it has no peers). Unlike a
    start point, it names no configuration: the sampler draws every other parameter, and the
    pruner judges the trial like any other.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{source}: low_cost={_preview(raw)} is not a mapping of searched parameter to value; "
                         "give e.g. low_cost: {epochs: 2}")
    return _parse_point(f"{source}: low_cost", raw, params)


def _parse_point(where: str, point: Mapping[str, Any], params: Mapping[str, Param]) -> dict[str, Any]:
    """A partial point (searched param -> value), each value inside its parameter's range."""
    for key, value in point.items():
        if key not in params:
            raise SpaceError(f"{where}: {key!r} is not a searched parameter{_hint(key, params)}; "
                             f"searched parameters: {', '.join(params) or '(none)'}")
        if not params[key].contains(value):
            raise SpaceError(f"{where}: {key}={_preview(value)} is outside the space; "
                             f"{key} takes {params[key].domain()}")
    return dict(point)


# --- reading YAML -----------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    ``safe_load`` silently keeps the last of two ``lr:`` entries; in a space file that is
    always a mistake (usually a copy-paste), so it is an error with both line numbers.
    """


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: valid YAML syntax, but never what the author meant."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the base constructor reports it
            break
        if first is not None:
            raise _DuplicateKeyError(None, None, f"duplicate key {key!r} (first given at line {first + 1})",
                                     key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str, source: str) -> Any:
    """The data of one YAML document, read safely: no Python objects, no key given twice, no alias bomb.

    Aliases (``*name``) repeat what their anchor (``&name``) holds; nested, a few lines of
    them stand for billions of values that only expand when the data is used (printed,
    hashed, compared). So the document is measured, as it would expand, before it is
    built, and refused beyond :data:`MAX_YAML_SIZE`. Shared by space files and recipes.
    Raises :class:`SpaceError`: one line starting with ``source``.
    """
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source)
        return loader.construct_document(node)
    except _DuplicateKeyError as err:
        raise SpaceError(f"{source}: line {err.problem_mark.line + 1}: {err.problem}; give each key once"
                         ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(err.problem or err.context or "unreadable").split())
        raise SpaceError(f"{source}: YAML syntax error{where}: {problem}; the file is not valid YAML"
                         ) from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: YAML syntax error: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse a document that, with its aliases expanded, exceeds :data:`MAX_YAML_SIZE` (or contains itself).

    Each node is measured once (an alias is the same node object as its anchor), so this
    takes time in the size of the text, not of the expansion.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            open_nodes.discard(id(node))
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            sizes[id(node)] = min(1 + own + sum(sizes[id(c)] for c in children), MAX_YAML_SIZE + 1)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise SpaceError(f"{source}: line {node.start_mark.line + 1}: an alias refers to the anchor it is "
                             "inside of, so the data would contain itself; write the values out")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    if sizes[id(root)] > MAX_YAML_SIZE:
        raise SpaceError(f"{source}: the YAML expands to more than {MAX_YAML_SIZE:,} values and characters once "
                         "its aliases (*name) repeat what their anchors (&name) hold; cnnsearch reads nothing "
                         "that large: write the values out, without nested aliases")


# --- one parameter ----------------------------------------------------------------------


class _Context:
    """Where a problem is: builds the one-line messages for one parameter of one file."""

    def __init__(self, source: str, name: str, key: Key | None) -> None:
        self.source = source
        self.name = name
        self.key = key  # None: a benchmark's own parameter (strict=False), no domain to check against

    def error(self, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: param {self.name!r}: {message}")

    def check_domain(self, value: Any, key: str) -> None:
        """Refuse ``value`` (given as ``key`` of the spec) unless the config key (or builder's key) accepts it."""
        if self.key is not None and not self.key.check(value):
            raise SpaceError(f"{self.source}: param {self.name!r} {key}: {self.name}={value!r} is not accepted; "
                             f"{self.name} takes {self.key.accepts()}" + _yaml_number_hint(value))


def _parse_param(ctx: _Context, spec: Mapping) -> Param:
    kind = spec.get("type")
    if kind is None:
        raise ctx.error(f"no `type:` in {_preview(spec)}; give type: one of {', '.join(SPEC_KEYS)}, "
                        "or a plain value to fix it")
    if kind not in SPEC_KEYS:
        raise ctx.error(f"type={kind!r} is not a parameter type{_hint(kind, SPEC_KEYS)}; "
                        f"valid types: {', '.join(SPEC_KEYS)}")
    for key in spec:
        if key not in SPEC_KEYS[kind]:
            raise ctx.error(f"unknown key {key!r} in a {kind} parameter{_hint(key, SPEC_KEYS[kind])}; "
                            f"accepted keys: {', '.join(SPEC_KEYS[kind])}")
    when = _parse_when(ctx, spec.get("when"))
    if kind in ("float", "int"):
        return _parse_range(ctx, kind, spec, when)
    if kind == "bool":
        key = ctx.key
        if key is not None and key.kind not in (bool, object):
            raise ctx.error(f"type=bool cannot give {ctx.name}, which takes {key.accepts()}; "
                            "use type: categorical" + (" or a range" if key.kind in (int, float) else ""))
        return Param(ctx.name, "bool", when=when)
    return Param(ctx.name, "categorical", choices=_parse_choices(ctx, spec), when=when)


def _parse_range(ctx: _Context, kind: str, spec: Mapping, when: dict[str, tuple]) -> Param:
    integer = kind == "int"
    for required in ("low", "high"):
        if required not in spec:
            raise ctx.error(f"a {kind} parameter needs `{required}:`, e.g. {{type: {kind}, low: 1, high: 8}}")
    low = _number(ctx, "low", spec["low"], integer)
    high = _number(ctx, "high", spec["high"], integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ctx.error(f"log={log!r} is not true or false; give log: true or leave it out")
    step = spec.get("step")
    if low > high:
        raise ctx.error(f"low={low!r} is greater than high={high!r}; low must be <= high")
    if log and low <= 0:
        raise ctx.error(f"log: true needs low > 0 (a log scale has no zero or negatives), got low={low!r}; "
                        f"raise low or drop log")
    if step is not None:
        if log:
            raise ctx.error(f"step={step!r} cannot be combined with log: true; remove step or log")
        step = _number(ctx, "step", step, integer)
        if step <= 0:
            raise ctx.error(f"step={step!r} must be greater than 0")
        if integer and (high - low) % step:
            raise ctx.error(f"high={high!r} is not low={low!r} plus a whole number of steps of {step!r}; "
                            f"use high: {low + (high - low) // step * step}")
        if not integer and (Decimal(repr(high)) - Decimal(repr(low))) % Decimal(repr(step)):
            last = float(Decimal(repr(low)) + (step_count(low, high, step) - 1) * Decimal(repr(step)))
            raise ctx.error(f"high={high!r} is not low={low!r} plus a whole number of steps of {step!r}; "
                            f"use high: {last!r}")
        if integer and step == 1:
            step = None  # the canonical form of an int range leaves the default step out
    param = Param(ctx.name, kind, low=low, high=high, log=log, step=step, when=when)
    _check_range_domain(ctx, param)
    return param


def _check_range_domain(ctx: _Context, param: Param) -> None:
    key = ctx.key
    if key is None or key.kind is object:
        return
    if key.kind is bool or key.kind is str:
        use = "bool" if key.kind is bool else "categorical"
        article = "an" if param.type == "int" else "a"
        raise ctx.error(f"{article} {param.type} range cannot give {ctx.name}, which takes {key.accepts()}; "
                        f"use type: {use}")
    if key.kind is int and param.type == "float":
        raise ctx.error(f"type=float cannot give {ctx.name}, which takes {key.accepts()}; use type: int")
    if key.choices is not None and param.type == "int" and param.count() <= MAX_CHECKED_VALUES:
        # kernel: {type: int, low: 3, high: 7} could suggest 4: check every value it can take.
        for value in param.values():
            try:
                ctx.check_domain(value, "range")
            except SpaceError as err:
                raise SpaceError(f"{err}; list the accepted values with type: categorical") from None
    ctx.check_domain(param.low, "low")
    ctx.check_domain(param.high, "high")


def _parse_choices(ctx: _Context, spec: Mapping) -> tuple:
    if "choices" not in spec:
        raise ctx.error("a categorical parameter needs `choices:`, "
                        "e.g. {type: categorical, choices: [32, 64]}")
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ctx.error(f"choices={_preview(choices)} is not a non-empty list; "
                        "give e.g. choices: [32, 64, 128]")
    key = ctx.key
    normalised: list[Any] = []
    for choice in choices:
        if not isinstance(choice, SCALARS):
            raise ctx.error(f"choice {_preview(choice)} is a {type(choice).__name__}; choices must be single "
                            "values (text, numbers, true/false or null)")
        if isinstance(choice, float) and not math.isfinite(choice):
            raise ctx.error(f"choice {choice!r} is not a finite number")
        if key is not None and key.kind is float and isinstance(choice, int) and not isinstance(choice, bool):
            choice = float(choice)  # growth: [1, 2] means 1.0 and 2.0; one spelling, one fingerprint
        ctx.check_domain(choice, "choices")
        if any(same_value(choice, seen) for seen in normalised):
            raise ctx.error(f"choice {choice!r} is given twice in choices; give each choice once")
        normalised.append(choice)
    return tuple(normalised)


def _parse_fixed(ctx: _Context, spec: Any) -> Any:
    if isinstance(spec, Mapping):  # {type: fixed, value: X}
        for key in spec:
            if key not in SPEC_KEYS["fixed"]:
                raise ctx.error(f"unknown key {key!r} in a fixed parameter{_hint(key, SPEC_KEYS['fixed'])}; "
                                f"accepted keys: {', '.join(SPEC_KEYS['fixed'])}")
        if "value" not in spec:
            raise ctx.error("a fixed parameter needs `value:`, e.g. {type: fixed, value: 3} or just 3")
        value = spec["value"]
    elif isinstance(spec, list):
        raise ctx.error(f"a list ({_preview(spec)}) is not a parameter; to search these values write "
                        "{type: categorical, choices: [...]}, to fix one write the value alone")
    else:
        value = spec
    if not isinstance(value, SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
        raise ctx.error(f"fixed value {_preview(value)} is not a single finite value; give text, a number, "
                        "true/false or null")
    key = ctx.key
    if key is not None and key.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ctx.check_domain(value, "value")
    return value


def _parse_when(ctx: _Context, when: Any) -> dict[str, tuple]:
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        raise ctx.error(f"when={_preview(when)} is not a mapping of parameter to value(s); "
                        "give e.g. when: {optimizer: sgd} or when: {optimizer: [sgd, adamw]}")
    parsed: dict[str, tuple] = {}
    for ref, values in when.items():
        listed = values if isinstance(values, list) else [values]
        if not listed or not all(isinstance(v, SCALARS) for v in listed):
            raise ctx.error(f"when.{ref}={_preview(values)} is not a value or a list of values; "
                            f"give e.g. when: {{{ref}: value}} or when: {{{ref}: [value1, value2]}}")
        unique: list[Any] = []
        for value in listed:
            if not any(same_value(value, seen) for seen in unique):
                unique.append(value)
        # Sorted so that [sgd, adamw] and [adamw, sgd] are one definition with one fingerprint.
        parsed[str(ref)] = tuple(sorted(unique, key=lambda v: (type(v).__name__, repr(v))))
    return dict(sorted(parsed.items()))


def _check_conditions(ctx: _Context, param: Param, params: Mapping[str, Param],
                      fixed: Mapping[str, Any]) -> None:
    for ref, values in param.when.items():
        if ref not in params and ref not in fixed:
            names = [n for n in [*params, *fixed] if n != param.name]
            raise ctx.error(f"condition on unknown parameter {ref!r}{_hint(ref, names)}; `when` can name the "
                            f"space's other parameters: {', '.join(names) or '(none)'}")
        for value in values:
            if ref in params:
                possible = params[ref].contains(value)
                takes = params[ref].domain()
            else:
                possible = same_value(value, fixed[ref])
                takes = f"only {fixed[ref]!r} (it is fixed)"
            if not possible:
                raise ctx.error(f"condition when.{ref}={value!r} can never hold; {ref} takes {takes}"
                                + _yaml_number_hint(value))


def _check_combinations(source: str, params: Mapping[str, Param], fixed: Mapping[str, Any],
                        builder: Builder | None) -> None:
    """Refuse a key the space names that does nothing in every trial (:data:`spaces.schema.INERT`).

    A fixed key is judged on its value, a searched one on every value it can take (null
    aside: it means unset), against every value the keys the rule reads can take (fixed,
    searched, or left at their defaults). When the combination holds in some trials only,
    the space is accepted: those trials train with the key ignored and record why in their
    notes rather than failing, because they are valid points of the space (as those of a
    `when` that switches a parameter off are) and failing them would spend budget on nothing.
    """
    known = {**DEFAULT_CONFIG, **fixed, "builder": builder.ref if builder else None}
    for rule in INERT:
        if rule.key not in params and rule.key not in fixed:
            continue
        own = [fixed[rule.key]] if rule.key in fixed else _possible_values(params[rule.key])
        searched = [name for name in rule.reads if name in params]
        # A conditional parameter may be switched off: then it has its default.
        options = [_possible_values(params[name]) + ([DEFAULT_CONFIG[name]] if params[name].when else [])
                   for name in searched]
        if math.prod(len(values) for values in [own, *options]) > MAX_CHECKED_VALUES:
            continue
        cases = []
        for value, *others in itertools.product(own, *options):
            config = {**known, **dict(zip(searched, others, strict=True))}
            if value is not None and (rule.key in fixed or _may_be_active(params[rule.key], config, fixed, searched)):
                cases.append((value, config))
        if cases and all(rule.holds(value, config) for value, config in cases):
            value, config = cases[0]
            shown = None if rule.key in fixed else f" (searched: {params[rule.key].domain()})"
            defaults = [name for name in rule.reads if name not in fixed and name not in params]
            aside = "".join(f" (and for every value of the searched {name}: {params[name].domain()})"
                            for name in searched)
            aside += f" ({', '.join(defaults)} left at the default)" if defaults else ""
            message = inert_message(rule, value, config, shown, aside)
            raise _Context(source, rule.key, CONFIG_KEYS[rule.key]).error(message)


def _may_be_active(param: Param, config: Mapping[str, Any], fixed: Mapping[str, Any], decided: list[str]) -> bool:
    """Whether ``param`` can be searched when the ``decided`` (and fixed) keys have ``config``'s values."""
    return all(any(same_value(config[ref], option) for option in allowed)
               for ref, allowed in param.when.items() if ref in fixed or ref in decided)


def _possible_values(param: Param) -> list[Any]:
    """The values a searched parameter can take, or its bounds when there are too many to list."""
    if param.type in ("float", "int") and (param.step is None and param.type == "float"
                                            or param.count() > MAX_CHECKED_VALUES):
        return [param.low, param.high]
    return param.values()


# --- small pieces of the messages -------------------------------------------------------


def _number(ctx: _Context, key: str, value: Any, integer: bool) -> int | float:
    """``value`` as the bound of a range, or the error that says why it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(f"{key}={value!r} is not a number; give {key} as a number"
                        + _yaml_number_hint(value))
    if not math.isfinite(value):
        raise ctx.error(f"{key}={value!r} is not a finite number; give a finite {key}")
    if integer:
        if not isinstance(value, int):
            raise ctx.error(f"{key}={value!r} is not an integer; an int parameter takes whole numbers "
                            "(use type: float for fractions)")
        return value
    return float(value)


def _yaml_number_hint(value: Any) -> str:
    """Why ``1e-4`` arrived as text: YAML 1.1 (PyYAML) only reads exponents written with a dot."""
    if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value.strip()):
        return f" (YAML reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e-4)"
    return ""


def _hint(word: Any, candidates: Any) -> str:
    """`` (did you mean 'log'?)`` for the closest candidate, or nothing."""
    names = [str(c) for c in candidates]
    # Swapped letters (lgo, stpe) first: difflib ranks 'low' and 'type' as close as 'log' and 'step'.
    close = ([n for n in names if sorted(n) == sorted(str(word))]
             or difflib.get_close_matches(str(word), names, n=1))
    return f" (did you mean {close[0]!r}?)" if close else ""


def _preview(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
