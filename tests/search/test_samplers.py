"""The default sampler `auto`: GP for one objective over a small space, TPE otherwise, and the hand-over."""

from __future__ import annotations

import optuna
import pytest

from search.study.samplers import AUTO_GP_MAX_PARAMS, AUTO_GP_TRIALS, SwitchingSampler, make_sampler


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
