"""What a study is made from, recorded in the study itself, and its trial budget.

The Optuna study in SQL storage is the single source of truth: a :class:`StudySpec` is
written into the study's user attrs when it is created, and every worker (local, Ray, or
``cnnsearch worker`` on another machine) reads it back from there instead of from flags.
Resuming or joining with a different space, dataset, split or objectives is refused.

The trial budget is study-wide and exact: ``--trials N`` is recorded in the study; the
points known in advance (warm-start configs, the space's start points, grid points) are
enqueued as WAITING trials, and a worker that finds none waiting creates a trial for the
sampler while the study holds fewer than N (:meth:`search.study.worker.Worker.claim`), so
N workers finish exactly N trials, and a budget of 100,000 costs nothing up front.
A study without a budget (``--timeout`` only) lets workers create trials on demand.
Creating a study and enqueueing its points hold :func:`storage.claims.study_lock`: runs
started at the same moment make one study with one budget.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import Any

import optuna
from optuna.trial import TrialState

from search.study.errors import StudyError
from search.study.samplers import DEFAULT_PRUNER, DEFAULT_SAMPLER, check_pruner, check_sampler, grid_budget
from search.trial.datasets import absolute_dataset_name
from search.trial.scores import BUILTIN as BUILTIN_SCORES
from search.trial.scores import Score, builtin_score, user_score
from spaces import Space, parse_space
from spaces.builder import check_source
from spaces.references import is_file_target
from spaces.schema import DEFAULT_CONFIG
from storage.claims import storage_lock
from storage.names import check_study_name
from storage.records import (
    FIXED_PARAMS,
    ORIGIN,
    STUDY_BUILDER,
    STUDY_CV,
    STUDY_DATASET,
    STUDY_IMAGE_SIZE,
    STUDY_OBJECTIVES,
    STUDY_SPACE,
    STUDY_SPACE_FINGERPRINT,
    STUDY_SPACE_NAME,
    STUDY_SPACE_STRICT,
    STUDY_SPLIT,
    STUDY_VERSIONS,
    UNPRUNED_ORIGINS,
)
from storage.studies import is_original

log = logging.getLogger(__name__)

OBJECTIVES = {"accuracy": "maximize", "loss": "minimize", "macro_f1": "maximize", "balanced_accuracy": "maximize",
              "top5_accuracy": "maximize", "latency": "minimize", "params": "minimize", "flops": "minimize"}
"""Objective name -> direction. ``accuracy``, ``loss`` (cross-entropy), ``macro_f1``, ``balanced_accuracy``
and ``top5_accuracy`` are the validation split's; ``latency`` ms/image. Besides these, a user's function:
``module:function:max`` or ``path/to/file.py:function:min`` (see :func:`parse_objective`)."""

METRIC_OF = {"accuracy": "val_accuracy", "loss": "val_loss", "latency": "latency_ms", "params": "params",
             "flops": "flops", **{name: key for name, (key, _) in BUILTIN_SCORES.items()}}
"""Objective name -> the metric it reads (a trial user attr; for a user's function, ``module:function``)."""

PER_EPOCH = {"accuracy", "loss", *BUILTIN_SCORES}
"""The built-in objectives measured by every epoch's validation pass (so the pruner can use them);
a user's function is too. ``latency``, ``params`` and ``flops`` are measured once, at the end."""

USER_DIRECTIONS = {"max": "maximize", "min": "minimize"}


@dataclass(frozen=True)
class Objective:
    """One objective of ``--objectives``: what ranks the trials, read from which metric, in which direction."""

    name: str
    metric: str
    direction: str
    per_epoch: bool

    @property
    def user(self) -> bool:
        """Whether a user's function computes it (``module:function``), not cnnsearch."""
        return self.name not in OBJECTIVES

    def score(self) -> Score | None:
        """What computes it from the validation pass (importing a user's function); None: the trainer measures it."""
        if self.user:
            return user_score(self.metric)
        return builtin_score(self.name) if self.name in BUILTIN_SCORES else None


def parse_objective(name: str) -> Objective:
    """An objective from its name: a built-in one, or ``module:function:max|min`` (a file path is made absolute)."""
    if name in OBJECTIVES:
        return Objective(name, METRIC_OF[name], OBJECTIVES[name], name in PER_EPOCH)
    ref, _, direction = name.rpartition(":")
    if ":" in ref:
        module, _, function = ref.rpartition(":")
        if module and function.isidentifier() and direction in USER_DIRECTIONS:
            if is_file_target(module):
                module = os.path.abspath(os.path.expanduser(module))
            ref = f"{module}:{function}"
            return Objective(f"{ref}:{direction}", ref, USER_DIRECTIONS[direction], True)
    elif ref and direction.isidentifier():  # module:function without its direction
        raise StudyError(f"--objectives: {name!r} needs a direction: {name}:max or {name}:min")
    raise StudyError(f"--objectives: {name!r} is unknown; choose from {', '.join(OBJECTIVES)} (comma-separated, "
                     "e.g. accuracy,latency), or your function as module:function:max or path/to/file.py:function:min")

IDENTITY = (STUDY_SPACE_FINGERPRINT, STUDY_DATASET, STUDY_IMAGE_SIZE, STUDY_SPLIT, STUDY_OBJECTIVES, STUDY_CV,
            STUDY_BUILDER)
"""The attributes a study may never change once created: joining with others is refused."""


@dataclass
class StudySpec:
    """Everything a worker needs to run a study's trials, as stored in the study."""

    space: Space
    dataset: str = "mnist5k"
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    sampler: str = DEFAULT_SAMPLER
    pruner: str = DEFAULT_PRUNER
    seed: int = 0
    image_size: int | None = None
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    data_dir: str | None = None
    max_params: int | None = None
    max_latency_ms: float | None = None
    trial_timeout: float | None = None
    max_failures: int = 5
    budget: int | None = None
    keep_checkpoints: bool = False
    deterministic: bool = False
    cv: int | None = None
    """``--cv K``: each trial trains once per fold of train + val; its value is the mean val accuracy."""
    space_derivation: dict[str, Any] | None = None
    """For the ``auto`` space (``run`` without ``--space``): what it was derived from and why
    (:meth:`spaces.derive.Derivation.to_record`), recorded so that ``status`` can say it."""
    mlflow: str | None = None
    """``--mlflow``: the MLflow tracking URI (no password) every worker logs its trials to (search.study.tracking)."""

    def __post_init__(self) -> None:
        # Absolute, so workers, exports and retrains started in other directories read the same files
        # (studies from before this recorded them relative to where `run` started: read from there).
        self.dataset = absolute_dataset_name(self.dataset)
        if self.data_dir:
            self.data_dir = os.path.abspath(os.path.expanduser(self.data_dir))
        if not self.objectives:
            raise StudyError("--objectives is empty; name at least accuracy")
        # Recorded as parsed: a function's file by its absolute path, read the same from any directory.
        self.objectives = [parse_objective(name).name for name in self.objectives]
        if len(set(self.objectives)) != len(self.objectives):
            raise StudyError(f"--objectives names one objective twice: {','.join(self.objectives)}")
        check_sampler(self.sampler, len(self.objectives))
        check_pruner(self.pruner)
        if self.budget is not None and self.budget < 1:
            raise StudyError(f"--trials must be at least 1, got {self.budget}")
        if self.max_failures < 1:
            raise StudyError(f"--max-failures must be at least 1, got {self.max_failures}")
        if self.cv is not None:
            if isinstance(self.cv, bool) or not isinstance(self.cv, int) or self.cv < 2:
                raise StudyError(f"--cv {self.cv!r}: give at least 2 folds (or leave --cv out for one "
                                 "train/val split)")
            if self.keep_checkpoints:
                raise StudyError(f"--keep-checkpoints with --cv {self.cv}: a trial trains {self.cv} models, "
                                 "none of them on the data its recipe retrains on; drop one of the two flags")

    @property
    def directions(self) -> list[str]:
        return [objective.direction for objective in self.objective_list]

    @property
    def objective_list(self) -> list[Objective]:
        """The objectives, parsed; the first ranks the trials and is what the pruner judges each epoch."""
        return [parse_objective(name) for name in self.objectives]

    def scores(self) -> tuple[Score, ...]:
        """What each epoch's validation pass computes besides accuracy and loss (imports a user's function)."""
        return tuple(score for objective in self.objective_list if (score := objective.score()) is not None)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial of the space can run: the pruners' maximum resource."""
        param = self.space.params.get("epochs")
        if param is None:
            return int(self.space.fixed.get("epochs", DEFAULT_CONFIG["epochs"]))
        if param.type == "categorical":
            return int(max(param.choices))
        return int(param.high)

    def split_args(self) -> dict[str, Any]:
        return {"seed": self.split_seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}

    def to_attrs(self) -> dict[str, Any]:
        """The study user attrs this spec is stored as (JSON-able; also what the dashboard shows)."""
        attrs = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "space"}
        attrs[STUDY_SPACE] = self.space.to_dict()
        attrs[STUDY_SPACE_NAME] = self.space.name
        attrs[STUDY_SPACE_STRICT] = self.space.strict
        attrs[STUDY_SPACE_FINGERPRINT] = self.space.fingerprint()
        attrs[STUDY_BUILDER] = self.space.builder.identity() if self.space.builder else None
        attrs[STUDY_SPLIT] = self.split_args()
        attrs[STUDY_VERSIONS] = package_versions()
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], study_name: str = "?") -> StudySpec:
        """Rebuild the spec a study was created with."""
        if STUDY_SPACE not in attrs or STUDY_SPACE_FINGERPRINT not in attrs:
            raise StudyError(f"study {study_name!r} was not created by cnnsearch (no space recorded in its "
                             "user attrs); create it with `cnnsearch run`")
        space = parse_space(attrs[STUDY_SPACE], source=f"study {study_name!r}",
                            strict=attrs.get(STUDY_SPACE_STRICT, True), name=attrs.get(STUDY_SPACE_NAME))
        if space.builder is not None:  # a worker (or export) whose copy of the builder differs is refused
            check_source(space.builder, (attrs.get(STUDY_BUILDER) or {}).get("sha256"), f"study {study_name!r}")
        known = {f.name for f in fields(cls)} - {"space"}
        return cls(space=space, **{k: v for k, v in attrs.items() if k in known})


def package_versions() -> dict[str, str]:
    """Versions of the packages a trial's result depends on, for provenance."""
    versions = {"python": platform.python_version()}
    for name in ("cnnsearch", "torch", "torchvision", "optuna"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The identity attributes that differ between a stored study and a new request."""
    if recorded.get(STUDY_DATASET):  # as a spec of it would read it (older studies hold relative paths)
        recorded = {**recorded, STUDY_DATASET: absolute_dataset_name(recorded[STUDY_DATASET])}
    out = []
    for key in IDENTITY:
        if recorded.get(key) != wanted.get(key):
            shown = {STUDY_SPACE_FINGERPRINT: "space"}.get(key, key)
            old, new = recorded.get(key), wanted.get(key)
            if key == STUDY_SPACE_FINGERPRINT:
                old = f"{recorded.get(STUDY_SPACE_NAME)} ({old})"
                new = f"{wanted.get(STUDY_SPACE_NAME)} ({new})"
            if key == STUDY_CV:
                old, new = old or "none", new or "none"
            if key == STUDY_BUILDER:
                old, new = (f"{b['builder']} (source sha256 {b['sha256'][:12]}...)" if b else "none"
                            for b in (old, new))
            out.append(f"{shown}: study has {old}, asked for {new}")
    return out


def create_or_resume(storage: optuna.storages.BaseStorage, name: str, spec: StudySpec) -> optuna.Study:
    """Create study ``name`` from ``spec``, or resume it if it was made from the same things.

    Settings that are not part of the study's identity (sampler, pruner, budget, timeouts)
    are updated to ``spec``'s on resume, so a user can e.g. switch from random to TPE.
    Processes that call this at the same moment take turns (:func:`storage.claims.study_lock`):
    one creates the study and records its spec, the others then join it.
    """
    with storage_lock(storage, name):
        return _create_or_resume(storage, name, spec)


def _create_or_resume(storage: optuna.storages.BaseStorage, name: str, spec: StudySpec) -> optuna.Study:
    wanted = spec.to_attrs()
    name = check_study_name(name)
    try:  # loaded first: create_study(load_if_exists) would log Optuna's "Using an existing study" line
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # new; load_if_exists: another process may create it meanwhile
        study = optuna.create_study(study_name=name, storage=storage, directions=spec.directions,
                                    load_if_exists=True)
    recorded = study.user_attrs
    if recorded:
        if STUDY_SPACE_FINGERPRINT not in recorded:
            raise StudyError(f"study {name!r} exists but was not created by cnnsearch; choose another --study")
        diff = differences(recorded, wanted)
        if diff:
            raise StudyError(f"study {name!r} exists with different settings ({'; '.join(diff)}); "
                             "use another --study name or the study's own settings")
        if [d.name.lower() for d in study.directions] != spec.directions:
            raise StudyError(f"study {name!r} exists with directions {study.directions}, asked for "
                             f"{spec.directions}")
    for key, value in wanted.items():
        if recorded.get(key) != value:
            study.set_user_attr(key, value)
    if not recorded:
        with warnings.catch_warnings():  # experimental since Optuna 3.2 and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in spec.objective_list])  # the dashboard's labels
    return study


def load_spec(study: optuna.Study) -> StudySpec:
    """The spec ``study`` was created with (what a joining worker runs)."""
    return StudySpec.from_attrs(study.user_attrs, study.study_name)


def fill_budget(study: optuna.Study, spec: StudySpec, warm_start: list[dict[str, Any]] | None = None) -> int:
    """Enqueue the points known in advance, within ``spec.budget``; return how many were added.

    Order: warm-start params first, then the space's ``start`` points, then the space's
    ``low_cost`` values, then grid points (shuffled with the study seed, so a partial grid still
    spreads over the space). A point some trial already ran is not enqueued again. The rest of
    the budget is left to the workers, which create the sampler's trials as they need them.
    Warm-start and start trials carry user attr ``origin`` (``warm_start`` / ``start``):
    :func:`search.study.objective.run_trial` never prunes them (see there). ``low_cost`` fixes
    only the params it names of the study's first drawn trial (the sampler draws the rest), so
    it is enqueued once, while no drawn trial exists (a study resumed after drawn trials ran has
    had its first one); it carries ``origin: low_cost`` and is pruned like any drawn trial.
    Processes filling one study at once take turns.
    """
    with storage_lock(study._storage, study.study_name) as still_held:  # Optuna keeps a study's storage private
        return _fill_budget(study, spec, warm_start, still_held)


def _fill_budget(study: optuna.Study, spec: StudySpec, warm_start: list[dict[str, Any]] | None,
                 still_held: Callable[[], None]) -> int:
    trials = study.get_trials(deepcopy=False)
    counted = sum(1 for t in trials if is_original(t))
    seen = {_key(t.params) for t in trials} | {_key(t.system_attrs.get(FIXED_PARAMS, {})) for t in trials}
    queue: list[tuple[dict[str, Any], str | None]] = []
    starts = spec.space.start if spec.sampler != "grid" else []
    for params, origin in [*((p, "warm_start") for p in warm_start or []), *((p, "start") for p in starts)]:
        if _key(params) not in seen:
            queue.append((params, origin))
            seen.add(_key(params))
    low_cost = spec.space.low_cost if spec.sampler != "grid" else {}
    drawn = [t for t in trials if t.user_attrs.get(ORIGIN) not in UNPRUNED_ORIGINS]  # low_cost's too
    if low_cost and not drawn:
        queue.append((low_cost, "low_cost"))
    if spec.sampler == "grid":
        points = spec.space.grid()
        random.Random(spec.seed).shuffle(points)
        queue += [(p, None) for p in points if _key(p) not in seen]
        budget = min(grid_budget(spec.space, spec.budget), counted + len(queue))  # each point once
    else:
        budget = spec.budget
    if budget is None:
        budget = counted + len(queue)
    queue = queue[:max(0, budget - counted)]
    for params, origin in queue:
        still_held()  # counted under the lock: a database restart since has ended it
        study.enqueue_trial(params, user_attrs={ORIGIN: origin} if origin else None)
    return len(queue)


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def warm_start_params(storage: optuna.storages.BaseStorage, source: str, space: Space,
                      top: int = 5) -> list[dict[str, Any]]:
    """Params of the ``top`` best completed trials of study ``source``, restricted to ``space``."""
    try:
        old = optuna.load_study(study_name=source, storage=storage)
    except KeyError:
        raise StudyError(f"--warm-start: no study named {source!r} in this storage") from None
    done = [t for t in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        raise StudyError(f"--warm-start: study {source!r} has no completed trial to start from")
    sign = -1 if old.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    done.sort(key=lambda t: sign * t.values[0])
    dists = space.distributions()
    out = []
    for t in done[:top]:
        params = {k: v for k, v in t.params.items() if k in dists and _admits(dists[k], v)}
        if params and params not in out:
            out.append(params)
    return out


def _admits(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high
