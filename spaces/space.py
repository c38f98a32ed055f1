"""A validated search space: the parameters a study searches, and how to sample them.

A :class:`Space` is built once from YAML by :func:`spaces.loader.parse_space`, which rejects
every bad definition; the objects here therefore trust their fields. A space turns an
Optuna trial into a complete :class:`~spaces.schema.TrialConfig` (:meth:`Space.suggest`),
enumerates its grid (:meth:`Space.grid`), and names itself with a fingerprint that a study
records so that workers joining it with a different space are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import yaml

from spaces.errors import SpaceError
from spaces.schema import TrialConfig

if TYPE_CHECKING:  # optuna is imported only where distributions are built: listing spaces stays fast
    import optuna

    from spaces.builder import Builder

PARAM_TYPES = ("float", "int", "categorical", "bool")

MAX_GRID_POINTS = 1_000_000
"""A grid larger than this is refused: enumerating it would exhaust memory before any trial ran."""


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` (Python's ``True == 1`` would merge them)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def step_values(low: float, high: float, step: float) -> list[float]:
    """``low, low + step, ..., high`` computed in decimal, so that 0.1 + 0.2 gives 0.3.

    The loader guarantees that ``high - low`` is a whole number of steps.
    """
    d_low, d_step = Decimal(repr(low)), Decimal(repr(step))
    return [float(d_low + k * d_step) for k in range(step_count(low, high, step))]


def step_count(low: float, high: float, step: float) -> int:
    """How many of ``low, low + step, ...`` lie in ``[low, high]``, counted in decimal."""
    return int((Decimal(repr(high)) - Decimal(repr(low))) / Decimal(repr(step))) + 1


@dataclass(frozen=True)
class Param:
    """One searched parameter.

    ``type`` is one of :data:`PARAM_TYPES`. Ranges (``float``, ``int``) use ``low``,
    ``high``, ``log`` and ``step``; ``categorical`` uses ``choices``; ``bool`` needs nothing.
    ``when`` maps another parameter's name to the values under which this one is searched
    (several names: all must hold); an inactive parameter is not suggested and keeps its
    default. Built and validated by :func:`spaces.loader.parse_space`.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution this parameter is sampled from."""
        from optuna import distributions

        if self.type == "float":
            return distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return distributions.CategoricalDistribution(self.options())

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Ask ``trial`` for this parameter's value, under the parameter's own name."""
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, self.options())

    def options(self) -> tuple:
        """The values of a categorical or bool parameter, in order."""
        return (False, True) if self.type == "bool" else self.choices

    def contains(self, value: Any) -> bool:
        """Whether this parameter can take ``value`` (mirrors Optuna's own range test)."""
        if self.type in ("categorical", "bool"):
            return any(same_value(value, option) for option in self.options())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-8

    def count(self) -> int:
        """How many grid values this parameter has (see :meth:`values`)."""
        if self.type in ("categorical", "bool"):
            return len(self.options())
        if self.type == "int":
            return (self.high - self.low) // (self.step or 1) + 1
        if self.step is None:
            raise SpaceError(f"param {self.name!r} is a continuous float [{self.low:g}, {self.high:g}] "
                             "without step (add `step:` or use type: categorical)")
        return step_count(self.low, self.high, self.step)

    def values(self) -> list:
        """Every value a grid search tries, in order; a float needs a ``step``."""
        if self.type in ("categorical", "bool"):
            return list(self.options())
        if self.type == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        self.count()  # raises for a continuous float
        return step_values(self.low, self.high, self.step)

    def domain(self) -> str:
        """The values it takes, in words: ``float [0.0003, 0.03] log``, ``one of sgd, adam``."""
        if self.type == "bool":
            return "true or false"
        if self.type == "categorical":
            return "one of " + ", ".join(_yaml_scalar(c) for c in self.choices)
        text = f"{self.type} [{self.low:g}, {self.high:g}]"
        text += " log" if self.log else ""
        return text + (f" step {self.step:g}" if self.step is not None else "")

    def describe(self) -> str:
        """:meth:`domain` and the condition, e.g. ``float [0.8, 0.99] when optimizer in {sgd}``."""
        conditions = [f"{ref} in {{{', '.join(_yaml_scalar(v) for v in values)}}}"
                      for ref, values in self.when.items()]
        return self.domain() + (" when " + " and ".join(conditions) if conditions else "")

    def to_dict(self) -> dict[str, Any]:
        """The canonical YAML spec of this parameter: defaults left out, condition keys sorted."""
        spec: dict[str, Any] = {"type": self.type}
        if self.type in ("float", "int"):
            spec["low"], spec["high"] = self.low, self.high
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        elif self.type == "categorical":
            spec["choices"] = list(self.choices)
        if self.when:
            spec["when"] = {ref: values[0] if len(values) == 1 else list(values)
                            for ref, values in sorted(self.when.items())}
        return spec


def _flow_yaml(value: Any) -> str:
    """``value`` as one line of YAML (``{type: float, low: 0.1, high: 1.0}``), keys in their order."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf).strip()
    return text.removesuffix("\n...")  # a lone scalar ends its document explicitly


def _yaml_scalar(value: Any) -> str:
    """A scalar as YAML writes it (``true``, ``null``, ``sgd``), for messages and descriptions."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


class Space:
    """A validated search space.

    ``params`` are the searched parameters in dependency order (a parameter comes after
    every parameter its ``when`` names); ``fixed`` are values every trial uses. With
    ``strict`` (the default) a config is a :class:`spaces.schema.TrialConfig` (keys the space
    leaves out take their defaults); otherwise it is a plain dict of the space's own keys
    (benchmark spaces whose names are not CNN config keys). ``full_grid`` says the space is
    meant to run every point of its grid (a full factorial table): ``--sampler auto`` then runs
    the grid. ``builder`` is the space's own model (``model: {builder: ...}``, :mod:`spaces.builder`):
    the parameters it declares go to the config's ``builder_args``. ``start`` are points tried
    first; ``low_cost`` the values of cost-related parameters the study's first drawn trial takes
    (:func:`search.study.spec.fill_budget`). Two spaces are equal when their fingerprints are.
    """

    def __init__(self, name: str, source: str, description: str, params: Mapping[str, Param],
                 fixed: Mapping[str, Any], strict: bool = True,
                 start: list[dict[str, Any]] | None = None, full_grid: bool = False,
                 builder: Builder | None = None, low_cost: dict[str, Any] | None = None) -> None:
        self.name = name
        self.source = source
        self.description = description
        self.params: dict[str, Param] = dict(params)
        self.fixed: dict[str, Any] = dict(fixed)
        self.strict = strict
        self.start: list[dict[str, Any]] = [dict(p) for p in start or []]
        self.low_cost: dict[str, Any] = dict(low_cost or {})
        self.full_grid = full_grid
        self.builder = builder

    def __repr__(self) -> str:
        return (f"Space(name={self.name!r}, params={list(self.params)}, fixed={list(self.fixed)}, "
                f"fingerprint={self.fingerprint()!r})")

    # --- sampling -----------------------------------------------------------------------

    def suggest(self, trial: optuna.trial.BaseTrial) -> TrialConfig | dict[str, Any]:
        """Sample a complete config from ``trial`` (also an ``optuna.trial.FixedTrial``).

        Every searched parameter whose condition holds is suggested under its own name;
        the rest keep their defaults. The result is the config a trial trains from (see
        :meth:`config_from_params`).
        """
        chosen: dict[str, Any] = {}
        for name, param in self.params.items():
            if self.is_active(name, chosen):
                chosen[name] = param.suggest(trial)
        return self.config_from_params(chosen)

    def config_from_params(self, params: Mapping[str, Any]) -> TrialConfig | dict[str, Any]:
        """The complete config of a trial whose params are ``params`` (e.g. ``trial.params``).

        A :class:`~spaces.schema.TrialConfig` for a strict space, a plain dict of the
        space's own keys otherwise. Values of inactive parameters are ignored. Raises :class:`SpaceError` when an active
        parameter is missing, a value is outside the space, or a name is not in the space.
        """
        where = f"{self.source}: params"
        unknown = [name for name in params if name not in self.params]
        if unknown:
            raise SpaceError(f"{where}: {unknown[0]!r} is not a searched parameter of this space; "
                             f"searched parameters: {', '.join(self.params) or '(none)'}")
        chosen: dict[str, Any] = {}
        for name, param in self.params.items():
            if not self.is_active(name, chosen):
                continue
            if name not in params:
                raise SpaceError(f"{where}: active parameter {name!r} has no value; "
                                 f"give {name} as {param.domain()}")
            value = params[name]
            if not param.contains(value):
                raise SpaceError(f"{where}: {name}={value!r} is outside the space; "
                                 f"{name} takes {param.domain()}")
            chosen[name] = value
        config = {**self.fixed, **chosen}
        if not self.strict:
            return config
        if self.builder is not None:
            # The builder's own keys travel in one mapping: every one of them, so a recipe states them all.
            args = {name: config.pop(name, default) for name, default in self.builder.defaults().items()}
            config.update(builder=self.builder.ref, builder_args=args)
        return TrialConfig.from_dict(config, where=self.source)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna distribution of every searched parameter, active or not."""
        return {name: param.distribution() for name, param in self.params.items()}

    def is_active(self, name: str, config_or_params: Mapping[str, Any]) -> bool:
        """Whether parameter ``name`` is searched given the other values.

        ``config_or_params`` is a complete config or a trial's params; a parameter whose
        condition names a parameter that is itself inactive (or absent) is inactive. Fixed
        parameters are always active.
        """
        if name in self.fixed:
            return True
        if name not in self.params:
            raise SpaceError(f"{self.source}: {name!r} is not a parameter of this space; "
                             f"parameters: {', '.join([*self.params, *self.fixed]) or '(none)'}")
        for ref, allowed in self.params[name].when.items():
            if ref in self.fixed:
                value = self.fixed[ref]
            elif ref in config_or_params and self.is_active(ref, config_or_params):
                value = config_or_params[ref]
            else:
                return False
            if not any(same_value(value, option) for option in allowed):
                return False
        return True

    def start_warnings(self) -> list[str]:
        """One line per value a ``start`` point (or ``low_cost``) sets that its parameter's condition switches off.

        Such a value is accepted (the point is valid) but never used: the parameter is not
        searched under the point's other values. Only conditions the point (or a fixed value)
        decides are judged; a value the sampler fills in later is not known here.
        """
        out = []
        points = [*((f"start[{i}]", point) for i, point in enumerate(self.start)), ("low_cost", self.low_cost)]
        for where, point in points:
            for name, value in point.items():
                for ref, allowed in self.params[name].when.items():
                    if ref not in point and ref not in self.fixed:
                        continue  # the sampler decides it
                    known = point[ref] if ref in point else self.fixed[ref]
                    if not any(same_value(known, option) for option in allowed):
                        wanted = " or ".join(str(a) for a in allowed)
                        out.append(f"{self.source}: {where}: {name}={value!r} is ignored: {name} is searched only "
                                   f"when {ref} is {wanted} (the point has {known})")
        return out

    # --- grid search --------------------------------------------------------------------

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point as a params dict, without duplicates, in a deterministic order.

        The points are the cartesian product of each parameter's values (:meth:`Param.values`)
        where a parameter whose condition fails is left out of the point. The order depends
        only on the definition (names sorted, conditions first), not on the file's key order.
        """
        size = self.grid_size()
        if size > MAX_GRID_POINTS:
            raise SpaceError(f"{self.source}: grid search would have {size} points, more than "
                             f"{MAX_GRID_POINTS}; narrow the ranges or add larger steps")
        order = self._grid_order()
        values = {name: self.params[name].values() for name in order}
        return list(self._points(order, values, {}))

    def grid_size(self) -> int:
        """The number of grid points, counted without enumerating them."""
        order = self._grid_order()
        counts = {name: self._grid_count(name) for name in order}
        referenced = {ref for param in self.params.values() for ref in param.when}

        def count(i: int, partial: dict[str, Any]) -> int:
            # Only parameters some condition names need branching: the others multiply.
            if i == len(order):
                return 1
            name = order[i]
            if not self.is_active(name, partial):
                return count(i + 1, partial)
            if name not in referenced:
                return counts[name] * count(i + 1, partial)
            return sum(count(i + 1, {**partial, name: value}) for value in self.params[name].values())

        return count(0, {})

    def _grid_count(self, name: str) -> int:
        try:
            return self.params[name].count()
        except SpaceError as err:
            raise SpaceError(f"{self.source}: grid search needs a finite set of values; {err}") from None

    def _grid_order(self) -> list[str]:
        return dependency_order(sorted(self.params), {n: set(p.when) - set(self.fixed)
                                                      for n, p in self.params.items()})

    def _points(self, order: list[str], values: dict[str, list], partial: dict[str, Any]
                ) -> Iterator[dict[str, Any]]:
        if not order:
            yield dict(partial)
            return
        name, rest = order[0], order[1:]
        if not self.is_active(name, partial):
            yield from self._points(rest, values, partial)
            return
        for value in values[name]:
            yield from self._points(rest, values, {**partial, name: value})

    # --- identity -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The canonical definition: ``parse_space(space.to_dict())`` gives an equal space."""
        params: dict[str, Any] = {name: param.to_dict() for name, param in self.params.items()}
        params.update(self.fixed)
        data: dict[str, Any] = {}
        if self.description:
            data["description"] = self.description
        if self.full_grid:
            data["full_grid"] = True
        if self.builder is not None:
            data["model"] = {"builder": self.builder.ref}
        data["params"] = params
        if self.start:
            data["start"] = [dict(p) for p in self.start]
        if self.low_cost:
            data["low_cost"] = dict(self.low_cost)
        return data

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML in the space's own order, one line per parameter."""
        data = self.to_dict()
        lines = [f"description: {_flow_yaml(data['description'])}"] if "description" in data else []
        lines += ["full_grid: true"] if self.full_grid else []
        lines += [f"model: {_flow_yaml(data['model'])}"] if "model" in data else []
        lines.append("params:" if data["params"] else "params: {}")
        lines += [f"  {_flow_yaml(name)}: {_flow_yaml(spec)}" for name, spec in data["params"].items()]
        if self.start:
            lines.append("start:")
            lines += [f"  - {_flow_yaml(point)}" for point in self.start]
        if self.low_cost:
            lines.append(f"low_cost: {_flow_yaml(self.low_cost)}")
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        """16 hex characters naming the definition (description, start points, low_cost and full_grid excluded).

        Stable across processes and key order; any change of a range, choice, condition,
        fixed value or builder reference changes it (the builder's source is checked apart:
        :meth:`spaces.builder.Builder.identity`).
        """
        data = self.to_dict()
        canonical = {"params": data["params"], "model": data["model"]} if "model" in data else data["params"]
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())


def dependency_order(names: list[str], deps: Mapping[str, set[str]]) -> list[str]:
    """``names`` reordered so each comes after its ``deps``, otherwise keeping their order.

    The caller has ruled out cycles (:func:`spaces.loader.parse_space` does).
    """
    placed: list[str] = []
    done: set[str] = set()
    remaining = list(names)
    while remaining:
        ready = next(n for n in remaining if deps.get(n, set()) <= done)
        placed.append(ready)
        done.add(ready)
        remaining.remove(ready)
    return placed

