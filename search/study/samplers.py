"""Optuna samplers and pruners by the names the CLI accepts, with cnnsearch's defaults, and the sampler
every worker runs them in (:class:`NoRepeatSampler`: seeded per trial, never repeating a config,
shown the whole study under Hyperband)."""

from __future__ import annotations

import copy
import logging
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import optuna

from search.study.errors import StudyError
from spaces import Space, SpaceError
from storage.records import CONSTRAINTS, FIXED_PARAMS

log = logging.getLogger(__name__)

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

SAMPLER_ATTEMPTS = 3
"""How often the study's sampler may propose a config the study already holds before random search takes over.

Each attempt is a fresh sampler with another seed; a model-based sampler that has settled on
a point (TPE or GP on a small discrete space) tends to propose it again whatever the seed, and
an attempt costs a GP fit, so few."""

RANDOM_ATTEMPTS = 20
"""Random draws (cheap) tried after :data:`SAMPLER_ATTEMPTS`, before an unseen grid point is looked up."""

MAX_UNSEEN_LOOKUP = 100_000
"""The largest finite space whose grid points are listed to find one no trial holds."""


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


def resolve_sampler(name: str | None, space: Space) -> str:
    """The sampler a study runs: ``name`` (default ``auto``), where ``auto`` on a space that declares
    itself a full grid (``full_grid: true``, e.g. ``grid-table``) is ``grid``."""
    name = name or DEFAULT_SAMPLER
    return "grid" if name == "auto" and space.full_grid else name


def default_pruner(sampler: str) -> str:
    """The pruner when none is named: none for a grid (every point of the table the user asked for
    trains to the end), else :data:`DEFAULT_PRUNER`."""
    return "none" if sampler == "grid" else DEFAULT_PRUNER


def grid_budget(space: Space, budget: int | None) -> int:
    """How many trials a grid study runs: each point once, so ``budget`` capped at the grid's size."""
    size = space.grid_size()
    return size if budget is None else min(budget, size)


def trial_seed(seed: int | None, number: int, attempt: int = 0) -> int | None:
    """The seed of the sampler that samples trial ``number`` of a study seeded ``seed`` (None: unseeded).

    Derived from the study's seed and the trial's number (NumPy's SeedSequence mixes them), not
    from the worker: every worker, however started, draws each trial from its own stream, and a
    seeded study samples the same configs whichever worker runs which trial.
    """
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, number, attempt]).generate_state(1)[0])


def make_study_sampler(name: str, seed: int | None, space: Space, *, n_objectives: int = 1, parallel: bool = False,
                       constraints: bool = False) -> NoRepeatSampler:
    """The sampler a worker runs a study's trials with: :func:`make_sampler` seeded per trial
    (:func:`trial_seed`), never proposing a config the study already holds (:class:`NoRepeatSampler`)."""

    def make(seed_of_trial: int | None) -> optuna.samplers.BaseSampler:
        return make_sampler(name, seed_of_trial, n_objectives=n_objectives, parallel=parallel,
                            constraints=constraints, n_params=len(space.params), sequence_seed=seed)

    return NoRepeatSampler(space, make, seed)


def make_sampler(name: str, seed: int | None, *, n_objectives: int = 1, parallel: bool = False,
                 constraints: bool = False, n_params: int | None = None,
                 sequence_seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``.

    ``auto`` (the default) is GP for one objective over at most :data:`AUTO_GP_MAX_PARAMS`
    searched parameters (``n_params``) for the study's first :data:`AUTO_GP_TRIALS` finished
    trials, then TPE; multivariate TPE otherwise. ``parallel`` turns on TPE's constant liar,
    so workers that sample at the same time do not all propose the same point (GP accounts
    for running trials itself). ``constraints`` reads the ``constraints`` user attr that the
    objective writes (values <= 0 are feasible) for the samplers that support constrained
    optimisation. Grid search is run by enqueueing every grid point (see
    :func:`search.study.spec.fill_budget`); the sampler it is given only ever samples the
    parameters an enqueued point leaves open, which is none. ``sequence_seed`` (default
    ``seed``) seeds QMC's sequence, which all of a study's trials must share: the sample index
    kept in the study then spreads them over one sequence, and ``seed`` drives only the
    parameters QMC samples at random.
    """
    check_sampler(name, n_objectives)
    with warnings.catch_warnings():
        # Optuna 5 deprecates constraints_func for Trial.set_constraint, which cannot update a value
        # once set and which optuna-dashboard 0.21 does not show (it reads the list that
        # constraints_func leaves in the system attrs). The warning says nothing to our users.
        warnings.filterwarnings("ignore", message="`constraints_func` has been deprecated", category=FutureWarning)
        return _make_sampler(name, seed, n_objectives, parallel, constraints, n_params,
                             seed if sequence_seed is None else sequence_seed)


def _make_sampler(name: str, seed: int | None, n_objectives: int, parallel: bool, constraints: bool,
                  n_params: int | None, sequence_seed: int | None) -> optuna.samplers.BaseSampler:
    constraints_func = _constraints if constraints else None
    if name == "auto":
        tpe = _make_sampler("tpe", seed, n_objectives, parallel, constraints, n_params, sequence_seed)
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
            return optuna.samplers.QMCSampler(seed=sequence_seed, scramble=True, warn_independent_sampling=False,
                                              independent_sampler=optuna.samplers.RandomSampler(seed=seed))
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


class NoRepeatSampler(optuna.samplers.BaseSampler):
    """Each trial sampled by a sampler of its own, and never a config the study already holds.

    Trial ``n`` is sampled by ``make(trial_seed(seed, n))``, so no worker replays another's
    stream (they all used to start from the study's seed), shown the whole study even under
    Hyperband (:func:`whole_study`). A trial without fixed params gets its
    whole config at once, as its relative sample (the space's parameters are its relative search
    space), and that config is new: one that a trial of the study already holds (finished,
    running or waiting; compared by :func:`config_key`) is sampled again with the next seed
    (:data:`SAMPLER_ATTEMPTS`), then at random (:data:`RANDOM_ATTEMPTS`), then taken from the
    grid points no trial holds. Only a finite space with no config left repeats one, and says so.
    Trials with fixed params (grid, start and warm-start points, retries of a crashed trial) are
    left to the trial's own sampler: their filler already skips points the study holds.

    Optuna's samplers know no such rule (only its grid and brute-force samplers avoid repeats),
    and a trial's params cannot change once suggested, so proposals are drawn on a copy of the
    trial first (:class:`_Probe`) and only the chosen one is suggested.
    """

    def __init__(self, space: Space, make: Callable[[int | None], optuna.samplers.BaseSampler],
                 seed: int | None) -> None:
        self.space, self.make, self.seed = space, make, seed
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}
        try:
            self._size: int | None = space.grid_size()
        except SpaceError:  # a continuous parameter: the space never runs out of configs
            self._size = None

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = self.make(trial_seed(self.seed, trial.number))
        return self._samplers[trial.number]

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._for(trial).before_trial(whole_study(study), trial)

    def infer_relative_search_space(self, study, trial):
        if _has_fixed_params(trial):
            return self._for(trial).infer_relative_search_space(whole_study(study), trial)
        return self.space.distributions()

    def sample_relative(self, study, trial, search_space):
        if _has_fixed_params(trial):
            return self._for(trial).sample_relative(whole_study(study), trial, search_space)
        return self._new_config(whole_study(study), trial)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(whole_study(study), trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(whole_study(study), trial, state, values)
        del self._samplers[trial.number]

    def _new_config(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """A config of the space that no other trial of the study holds, if one is left."""
        taken = _taken_configs(study, trial.number)
        first = _Probe.sample(self._for(trial), study, trial, self.space)
        if self._size is not None and len(taken) >= self._size:
            log.warning("trial %d repeats a config: the study's trials hold all %d configs of the space",
                        trial.number, self._size)
            return first
        tries = SAMPLER_ATTEMPTS + RANDOM_ATTEMPTS
        for attempt, params in enumerate(self._proposals(study, trial, first)):
            key = config_key(params)
            if key not in taken:
                return params
            log.debug("trial %d: proposal %d of %d repeats the config of trial %d; sampling again",
                      trial.number, attempt + 1, tries, taken[key])
        unseen = self._unseen_grid_point(taken, trial.number)
        if unseen is not None:
            log.debug("trial %d: took a grid point no trial holds", trial.number)
            return unseen
        log.warning("trial %d repeats the config of trial %d: %d proposals found no config the study lacks",
                    trial.number, taken[config_key(first)], tries)
        return first

    def _proposals(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                   first: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``first``, then the proposals of the study's sampler with the next seeds, then of random search."""
        yield first
        for attempt in range(1, SAMPLER_ATTEMPTS + RANDOM_ATTEMPTS):
            seed = trial_seed(self.seed, trial.number, attempt)
            if attempt < SAMPLER_ATTEMPTS:
                sampler = self.make(seed)
                sampler.before_trial(study, trial)
            else:
                sampler = optuna.samplers.RandomSampler(seed=seed)
            yield _Probe.sample(sampler, study, trial, self.space)

    def _unseen_grid_point(self, taken: dict[tuple, int], number: int) -> dict[str, Any] | None:
        if self._size is None or self._size > MAX_UNSEEN_LOOKUP:
            return None
        unseen = [p for p in self.space.grid() if config_key(p) not in taken]
        if not unseen:
            return None
        return random.Random(trial_seed(self.seed, number, SAMPLER_ATTEMPTS + RANDOM_ATTEMPTS)).choice(unseen)


def config_key(params: dict[str, Any]) -> tuple:
    """What makes two configs the same: the same params, floats compared to 12 significant digits
    (a grid's ``0.3`` and a sampler's ``0.30000000000000004`` are one value), ``True`` apart from ``1``."""
    return tuple(sorted((name, isinstance(value, bool), float(f"{value:.12g}") if isinstance(value, float) else value)
                        for name, value in params.items()))


def whole_study(study: optuna.Study) -> optuna.Study:
    """The study itself where Optuna hands a sampler one Hyperband bracket's view of it.

    Under :class:`optuna.pruners.HyperbandPruner` Optuna hands a trial's sampler a view of the
    study (``_BracketStudy``) whose public ``get_trials`` lists only the trial's bracket. Optuna's
    own samplers (TPE, GP, CMA-ES) read the private ``_get_trials``, which that view does not
    filter (Optuna 5.1), so they already model every bracket's trials, as BOHB does; a sampler
    that reads ``get_trials`` saw one bracket: :class:`SwitchingSampler` (``auto`` on a small
    space) counted one bracket's finished trials, so it switched from GP to TPE only once a
    bracket alone held :data:`AUTO_GP_TRIALS`. Unwrapping the view here gives every sampler the
    same whole study whichever method it reads; the pruner still judges each trial within its
    bracket. Optuna has no option for this, and the view keeps the study in ``_study``, its one
    way back. (Optuna's docs for the pruner, "at least 4 x 10 trials are consumed for startup",
    describe the public view, not what its samplers read.)
    """
    return getattr(study, "_study", study)


def _has_fixed_params(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.system_attrs.get(FIXED_PARAMS))


def _taken_configs(study: optuna.Study, number: int) -> dict[tuple, int]:
    """The config of every other trial of the study (its params, or the fixed params of a waiting one) -> its number.

    Under Hyperband Optuna hands samplers a view of the study cut down to the trial's bracket;
    a repeat is a repeat in any bracket, so this reads the storage, as Optuna's samplers do.
    """
    taken: dict[tuple, int] = {}
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
        for params in (t.params, t.system_attrs.get(FIXED_PARAMS)):
            if params and t.number != number:
                taken.setdefault(config_key(params), t.number)
    return taken


class _Probe:
    """A stand-in for :class:`optuna.Trial` that asks a sampler for a whole config and keeps it here.

    It answers the ``suggest_*`` calls of :meth:`spaces.Space.suggest` as Optuna's trial does
    (the sampler's relative sample where it covers the parameter, else its independent sample),
    on a copy of the trial, without writing to the storage: a proposal that is refused leaves
    no trace in the study.
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler, study: optuna.Study,
                 trial: optuna.trial.FrozenTrial) -> None:
        self.sampler, self.study, self.trial = sampler, study, copy.deepcopy(trial)
        self.search_space = sampler.infer_relative_search_space(study, self.trial)
        self.relative = sampler.sample_relative(study, self.trial, self.search_space)

    @classmethod
    def sample(cls, sampler: optuna.samplers.BaseSampler, study: optuna.Study, trial: optuna.trial.FrozenTrial,
               space: Space) -> dict[str, Any]:
        """The params ``sampler`` proposes for ``trial``: a config of ``space``'s active parameters."""
        probe = cls(sampler, study, trial)
        space.suggest(probe)
        return dict(probe.trial.params)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._suggest(name, optuna.distributions.FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._suggest(name, optuna.distributions.IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices: tuple) -> Any:
        return self._suggest(name, optuna.distributions.CategoricalDistribution(choices))

    def _suggest(self, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
        if name in self.relative and self.search_space.get(name) == distribution:
            value = self.relative[name]
        else:
            value = self.sampler.sample_independent(self.study, self.trial, name, distribution)
        self.trial.params[name] = value
        self.trial.distributions[name] = distribution
        return value
