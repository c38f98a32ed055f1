"""The default sampler `auto` (GP for one objective over a small space, TPE otherwise, and the hand-over), and the
sampler every worker runs: seeded per trial, never repeating a config the study holds."""

from __future__ import annotations

import logging

import optuna
import pytest

from search.study.samplers import (
    AUTO_GP_MAX_PARAMS,
    AUTO_GP_TRIALS,
    NoRepeatSampler,
    SwitchingSampler,
    make_sampler,
    make_study_sampler,
)
from spaces import parse_space


@pytest.mark.parametrize("n_params, n_objectives, expected", [
    (6, 1, optuna.samplers.GPSampler),
    (AUTO_GP_MAX_PARAMS, 1, optuna.samplers.GPSampler),
    (AUTO_GP_MAX_PARAMS + 1, 1, optuna.samplers.TPESampler),
    (6, 2, optuna.samplers.TPESampler),
])
def test_auto_picks_gp_only_for_one_objective_over_a_small_space(n_params, n_objectives, expected) -> None:
    sampler = make_sampler("auto", 0, n_objectives=n_objectives, n_params=n_params)
    if expected is optuna.samplers.GPSampler:
        assert isinstance(sampler, SwitchingSampler) and sampler.switch_at == AUTO_GP_TRIALS
        assert isinstance(sampler.first, optuna.samplers.GPSampler)
        assert isinstance(sampler.then, optuna.samplers.TPESampler)
    else:
        assert isinstance(sampler, optuna.samplers.TPESampler)


class _Recording(optuna.samplers.RandomSampler):
    """A random sampler that notes which trials it sampled."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self.trials: list[int] = []

    def sample_independent(self, study, trial, param_name, param_distribution):
        self.trials.append(trial.number)
        return super().sample_independent(study, trial, param_name, param_distribution)


def test_switching_sampler_hands_over_after_the_finished_trials_it_was_given() -> None:
    first, then = _Recording(0), _Recording(1)
    study = optuna.create_study(sampler=SwitchingSampler(first, then, switch_at=3))
    for i in range(5):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        if i == 1:  # a pruned trial counts as finished too: the hand-over follows the study's progress
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.5)
    assert first.trials == [0, 1, 2] and then.trials == [3, 4]


def test_under_hyperband_auto_hands_over_after_the_whole_studys_finished_trials_not_one_brackets() -> None:
    # SwitchingSampler counts finished trials with the public get_trials, which Optuna's bracket view filters
    # (TPE and GP read _get_trials, which it does not): counting one bracket, auto stayed on GP until a single
    # bracket held AUTO_GP_TRIALS.
    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                    "width": {"type": "int", "low": 4, "high": 64}, "epochs": 1}})
    first, then = _Recording(0), _Recording(1)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=NoRepeatSampler(space, lambda seed: SwitchingSampler(first, then, 4), 0))
    for _ in range(10):
        trial = study.ask()
        config = space.suggest(trial)
        trial.report(0.1, 1)
        trial.should_prune()  # sets the pruner's brackets up
        study.tell(trial, config.lr * config.width)
    assert len({pruner._get_bracket_id(study, t) for t in study.get_trials()}) > 1
    assert sorted(set(first.trials)) == [0, 1, 2, 3] and sorted(set(then.trials)) == list(range(4, 10))


def test_optunas_tpe_under_hyperband_already_models_every_brackets_trials() -> None:
    # What the bracket view leaves unfiltered (Optuna 5.1): TPE reads _get_trials, so the default's TPE never
    # needed whole_study. If a later Optuna filters it too, whole_study is what keeps TPE on the whole study.
    seen: dict[int, int] = {}
    views: set[str] = set()

    class _Counting(optuna.samplers.TPESampler):
        def infer_relative_search_space(self, study, trial):  # handed the bracket's view, read as TPE reads it
            views.add(type(study).__name__)
            seen[trial.number] = len(study._get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
            return super().infer_relative_search_space(study, trial)

    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=_Counting(seed=0, n_startup_trials=2))
    for _ in range(8):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 1)
        trial.should_prune()
        study.tell(trial, x)
    assert len({pruner._get_bracket_id(study, t) for t in study.get_trials()}) > 1
    assert views == {"_BracketStudy"} and seen == {n: n for n in range(8)}


SMALL_SPACE = {"params": {"lr": {"type": "categorical", "choices": [0.003, 0.03]},
                          "width": {"type": "int", "low": 4, "high": 6}, "epochs": 1}}


def _run_trials(workers: list[optuna.Study], space, n: int) -> list[dict]:
    """``n`` trials, the workers taking turns; returns each trial's params in trial order."""
    for i in range(n):
        study = workers[i % len(workers)]
        trial = study.ask()
        config = space.suggest(trial)
        study.tell(trial, config.lr * config.width)
    return [t.params for t in workers[0].get_trials()]


def _workers(n: int, sampler: str, space, seed: int = 0) -> list[optuna.Study]:
    """``n`` workers on one study, each with the sampler a worker builds (the same seed for all, as in a study)."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    return [optuna.load_study(study_name="s", storage=storage, sampler=make_study_sampler(sampler, seed, space))
            for _ in range(n)]


@pytest.mark.parametrize("sampler", ["auto", "tpe", "random", "qmc", "nsga2"])
def test_a_seeded_study_samples_the_same_configs_however_many_workers_share_it(sampler: str) -> None:
    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                    "width": {"type": "int", "low": 4, "high": 64}, "epochs": 1}})
    alone = _run_trials(_workers(1, sampler, space), space, 6)
    shared = _run_trials(_workers(3, sampler, space), space, 6)
    assert shared == alone
    assert len({tuple(sorted(p.items())) for p in alone}) == 6


def test_a_small_space_runs_every_config_once_before_repeating_one_and_says_so(caplog) -> None:
    space = parse_space(SMALL_SPACE)
    with caplog.at_level(logging.WARNING, logger="search.study.samplers"):
        params = _run_trials(_workers(2, "tpe", space), space, 7)
    assert len({tuple(sorted(p.items())) for p in params[:6]}) == 6  # all 2 x 3 configs first
    assert params[6] in params[:6]
    assert caplog.messages == ["trial 6 repeats a config: the study's trials hold all 6 configs of the space"]


class _Shown(optuna.samplers.RandomSampler):
    """A random sampler that notes how many finished trials of the study each trial's sampling was shown."""

    shown: dict[int, int] = {}

    def sample_relative(self, study, trial, search_space):
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED))
        _Shown.shown[trial.number] = len(finished)
        return super().sample_relative(study, trial, search_space)


def test_under_hyperband_the_sampler_learns_from_every_bracket_not_only_the_trials_own() -> None:
    # Optuna's bracket view (4 brackets for 1-27 epochs) lists only the trial's bracket in the public get_trials;
    # the study's sampler is shown the whole study, whichever of get_trials and _get_trials it reads.
    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                    "width": {"type": "int", "low": 4, "high": 64}, "epochs": 1}})
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=NoRepeatSampler(space, lambda seed: _Shown(seed), 0))
    _Shown.shown = {}
    for n in range(12):
        trial = study.ask()
        config = space.suggest(trial)
        trial.report(0.1, 1)
        trial.should_prune()  # sets the pruner's brackets up
        if n % 3 == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, config.lr * config.width)
    brackets = {pruner._get_bracket_id(study, t) for t in study.get_trials()}
    assert len(brackets) > 1  # the trials did land in several brackets
    assert _Shown.shown == {n: n for n in range(12)}
