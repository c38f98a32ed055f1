"""What one trial does with the pruner: start points and warm-start configs always run to the end."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.study.objective import run_trial, worker_identity
from search.study.spec import StudySpec, fill_budget
from search.trial.data import make_split, prepare_data
from search.trial.datasets import load_dataset
from spaces import parse_space
from storage.records import METRICS


@pytest.fixture(scope="module")
def digits():
    images = load_dataset("digits")
    return prepare_data(images, make_split(images.labels, seed=0), "cpu")


def test_start_points_are_never_pruned_and_sampled_trials_are(digits) -> None:
    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                    "width": 4, "depth": 1, "epochs": 2},
                         "start": [{"lr": 0.005}]}, source="test")
    spec = StudySpec(space=space, dataset="digits", budget=2)
    # A pruner that prunes every trial at its first report.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    fill_budget(study, spec)
    study.enqueue_trial({})  # the sampler's trial of the budget, which a worker makes when none waits
    identity = worker_identity(torch.device("cpu"))
    outcomes = []
    for trial in study.get_trials(deepcopy=False):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
        outcomes.append(run_trial(study, trial._trial_id, spec, digits, torch.device("cpu"), identity))
    start, sampled = study.get_trials()
    assert start.user_attrs["origin"] == "start" and "origin" not in sampled.user_attrs
    assert [o.state for o in outcomes] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(start.intermediate_values) == [1, 2]  # both epochs reported, the pruner not asked
    assert sampled.user_attrs["fail_reason"] == "pruned" and list(sampled.intermediate_values) == [1]
    # The completed trial records its complete config as a plain dict, with its own seed, and every metric.
    assert start.user_attrs["seed"] == spec.seed * 100_000 + start.number
    assert start.user_attrs["config"] == space.config_from_params(start.params).replace(
        seed=start.user_attrs["seed"]).to_dict()
    assert set(METRICS) <= set(start.user_attrs) and start.user_attrs["curves"]["val_accuracy"] == [
        start.intermediate_values[1], start.intermediate_values[2]]
