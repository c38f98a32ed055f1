"""Optuna samplers and pruners by the names the CLI accepts, with cnnsearch's defaults."""

from __future__ import annotations

import warnings

import optuna

from search.study.errors import StudyError
from storage.records import CONSTRAINTS

SAMPLERS = ("auto", "tpe", "random", "grid", "gp", "cmaes", "qmc", "nsga2")
PRUNERS = ("none", "median", "sha", "hyperband")
DEFAULT_SAMPLER = "auto"
DEFAULT_PRUNER = "hyperband"

AUTO_GP_MAX_PARAMS = 12
"""``auto`` uses GP for one objective over at most this many searched parameters.

Measured (BENCHMARKS.md): on NAS-Bench-201's 6-parameter cell space GP's median regret at 50
and 100 evaluations is below TPE's (ours and Optuna's default) and random search's on
CIFAR-10, CIFAR-100 and ImageNet16-120 (``benchmarks/nasbench201.py``). Its cost per
suggestion grows with the parameters and the trials (``benchmarks/sampler_cost.py``, one CPU
thread, trials 91-100: ~180 ms with 6 parameters, ~160 ms with 12, ~410 ms with the default
space's 23, against 2-20 ms for TPE). The default space also has conditional parameters (GP
samples them at random) and runs with Hyperband (GP learns from completed trials only, TPE
from pruned ones too), so it stays with TPE. The threshold between 6 and 23 is a judgment.
"""

AUTO_GP_TRIALS = 200
"""``auto`` hands over from GP to TPE after this many finished trials: GP's cost keeps growing."""


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
                 constraints: bool = False, n_params: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``.

    ``auto`` (the default) is GP for one objective over at most :data:`AUTO_GP_MAX_PARAMS`
    searched parameters (``n_params``) for the study's first :data:`AUTO_GP_TRIALS` finished
    trials, then TPE; multivariate TPE otherwise. ``parallel`` turns on TPE's constant liar,
    so workers that sample at the same time do not all propose the same point (GP accounts
    for running trials itself). ``constraints`` reads the ``constraints`` user attr that the
    objective writes (values <= 0 are feasible) for the samplers that support constrained
    optimisation. Grid search is run by enqueueing every grid point (see
    :func:`search.study.spec.fill_budget`); the sampler it is given only ever samples the
    parameters an enqueued point leaves open, which is none.
    """
    check_sampler(name, n_objectives)
    with warnings.catch_warnings():
        # Optuna 5 deprecates constraints_func for Trial.set_constraint, which cannot update a value
        # once set and which optuna-dashboard 0.21 does not show (it reads the list that
        # constraints_func leaves in the system attrs). The warning says nothing to our users.
        warnings.filterwarnings("ignore", message="`constraints_func` has been deprecated", category=FutureWarning)
        return _make_sampler(name, seed, n_objectives, parallel, constraints, n_params)


def _make_sampler(name: str, seed: int | None, n_objectives: int, parallel: bool, constraints: bool,
                  n_params: int | None) -> optuna.samplers.BaseSampler:
    constraints_func = _constraints if constraints else None
    if name == "auto":
        tpe = _make_sampler("tpe", seed, n_objectives, parallel, constraints, n_params)
        if n_objectives > 1 or n_params is None or n_params > AUTO_GP_MAX_PARAMS:
            return tpe
        gp = optuna.samplers.GPSampler(seed=seed, constraints_func=constraints_func,
                                       warn_independent_sampling=False)
        return SwitchingSampler(gp, tpe, AUTO_GP_TRIALS)
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
        # GP samples conditional parameters at random; a warning per parameter per trial says so.
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints_func,
                                         warn_independent_sampling=False)
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
    return list(trial.user_attrs.get(CONSTRAINTS, []))


class SwitchingSampler(optuna.samplers.BaseSampler):
    """``first`` for a study's first ``switch_at`` finished trials, ``then`` for the rest.

    Optuna has no sampler that changes algorithm with the trial count (OptunaHub's
    AutoSampler decides by the search space, and is not a dependency here). The choice is
    made once per trial, in ``before_trial``, so one trial never mixes the two; it counts
    COMPLETE and PRUNED trials of the whole study, so every worker switches at about the
    same point.
    """

    def __init__(self, first: optuna.samplers.BaseSampler, then: optuna.samplers.BaseSampler,
                 switch_at: int) -> None:
        self.first, self.then, self.switch_at = first, then, switch_at
        self._chosen: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        return self._chosen.get(trial.number, self.then)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED))
        self._chosen[trial.number] = self.first if len(finished) < self.switch_at else self.then
        self._chosen[trial.number].before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._chosen.pop(trial.number, self.then).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.first.reseed_rng()
        self.then.reseed_rng()
