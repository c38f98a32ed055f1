"""Optuna samplers and pruners by the names the CLI accepts, with cnnsearch's defaults."""

from __future__ import annotations

import warnings

import optuna

from search.errors import StudyError

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes", "qmc", "nsga2")
PRUNERS = ("none", "median", "sha", "hyperband")
DEFAULT_SAMPLER = "tpe"
DEFAULT_PRUNER = "hyperband"


def check_sampler(name: str, n_objectives: int) -> None:
    """Refuse an unknown sampler name, or one that cannot handle the objectives."""
    if name not in SAMPLERS:
        raise StudyError(f"--sampler {name!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    if n_objectives > 1 and name in ("cmaes", "gp"):
        raise StudyError(f"--sampler {name} optimises one objective; with several objectives use "
                         "tpe, nsga2, random, qmc or grid")


def check_pruner(name: str) -> None:
    """Refuse an unknown pruner name."""
    if name not in PRUNERS:
        raise StudyError(f"--pruner {name!r} is unknown; choose one of {', '.join(PRUNERS)}")


def make_sampler(name: str, seed: int | None, *, n_objectives: int = 1, parallel: bool = False,
                 constraints: bool = False) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``.

    ``parallel`` turns on TPE's constant liar, so workers that sample at the same time do
    not all propose the same point. ``constraints`` reads the ``constraints`` user attr
    that the objective writes (values <= 0 are feasible) for the samplers that support
    constrained optimisation. Grid search is run by enqueueing every grid point (see
    :func:`search.study.fill_budget`); the sampler it is given only ever samples the
    parameters an enqueued point leaves open, which is none.
    """
    check_sampler(name, n_objectives)
    constraints_func = _constraints if constraints else None
    if name == "tpe":
        # multivariate+group model the joint and conditional structure of CNN spaces;
        # without group TPE treats conditional params independently and samples poorly.
        # Both have been "experimental" since Optuna 2.x; the warning says nothing to our users.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=parallel,
                constraints_func=constraints_func, n_startup_trials=8,
            )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints_func)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints_func)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, max_epochs: int, n_objectives: int = 1) -> optuna.pruners.BasePruner:
    """The Optuna pruner called ``name``, acting on per-epoch validation accuracy.

    Optuna cannot prune multi-objective trials, so several objectives always get no pruner.
    """
    check_pruner(name)
    if n_objectives > 1 or name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs),
                                          reduction_factor=3)


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", []))
