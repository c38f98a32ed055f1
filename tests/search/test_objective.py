"""What one trial does with the pruner, its time limit and the worker's memory.

Start points and warm-start configs always run to the end; a trial that trained every epoch is
COMPLETE; a stopped trial records the time and epochs it trained; a model too big for the
worker is refused before training; the time limit holds inside an epoch.
"""

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
    outcomes = _run_waiting(study, spec, digits)
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


def test_the_low_cost_trial_is_drawn_but_for_its_epochs_and_pruned_like_any_drawn_trial(digits) -> None:
    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                    "epochs": {"type": "int", "low": 2, "high": 3}, "width": 4, "depth": 1},
                         "start": [{"lr": 0.005, "epochs": 2}], "low_cost": {"epochs": 2}}, source="test")
    spec = StudySpec(space=space, dataset="digits", budget=2)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    assert fill_budget(study, spec) == 2
    outcomes = _run_waiting(study, spec, digits)
    start, low_cost = study.get_trials()
    assert [o.state for o in outcomes] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert low_cost.user_attrs["origin"] == "low_cost" and low_cost.params["epochs"] == 2
    assert low_cost.params["lr"] != 0.005 and list(low_cost.intermediate_values) == [1]  # lr drawn; the pruner asked


def _run_waiting(study: optuna.Study, spec: StudySpec, data) -> list:
    """Run every waiting trial in order as a worker would; their outcomes."""
    identity = worker_identity(torch.device("cpu"))
    outcomes = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
        outcomes.append(run_trial(study, trial._trial_id, spec, data, torch.device("cpu"), identity))
    return outcomes


def _run_enqueued(study: optuna.Study, spec: StudySpec, data, params: list[dict]) -> list[optuna.trial.FrozenTrial]:
    """Enqueue ``params`` (sampled trials, no ``origin``), run each as a worker would, return them."""
    for p in params:
        study.enqueue_trial(p)
    _run_waiting(study, spec, data)
    return study.get_trials()


def _space(**fixed) -> object:
    return parse_space({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                   "depth": 1, "batch_size": 64, **fixed}}, source="test")


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_trial_that_trained_every_epoch_is_complete_whatever_the_pruner_says(digits, epochs: int) -> None:
    spec = StudySpec(space=_space(width=4, epochs=epochs), dataset="digits")
    # Prunes every trial from its last epoch on (earlier epochs are its warm-up).
    pruner = optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=epochs)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    (trial,) = _run_enqueued(study, spec, digits, [{"lr": 0.005}])
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_message")
    assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
    assert trial.user_attrs["epochs_run"] == epochs and "fail_reason" not in trial.user_attrs


def test_a_pruned_trial_records_the_seconds_and_epochs_it_trained(digits) -> None:
    spec = StudySpec(space=_space(width=4, epochs=3), dataset="digits")
    pruner = optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2)  # prunes at epoch 2 of 3
    study = optuna.create_study(direction="maximize", pruner=pruner)
    (trial,) = _run_enqueued(study, spec, digits, [{"lr": 0.005}])
    assert (trial.state, trial.user_attrs["fail_reason"]) == (TrialState.PRUNED, "pruned")
    assert trial.user_attrs["epochs_run"] == 2
    assert trial.user_attrs["train_seconds"] > 0


def test_the_trial_timeout_stops_training_right_after_the_step_that_passed_it(digits) -> None:
    # batch 8: 180 steps an epoch on digits; any first step outlasts a nanosecond limit.
    spec = StudySpec(space=_space(width=4, epochs=2, batch_size=8), dataset="digits", trial_timeout=1e-9)
    study = optuna.create_study(direction="maximize")
    (trial,) = _run_enqueued(study, spec, digits, [{"lr": 0.005}])
    assert (trial.state, trial.user_attrs["fail_reason"]) == (TrialState.PRUNED, "timeout")
    assert "step 1/" in trial.user_attrs["fail_message"] and "of epoch 1" in trial.user_attrs["fail_message"]
    assert trial.user_attrs["epochs_run"] == 0 and trial.user_attrs["train_seconds"] > 0


def test_a_pretrained_backbones_memory_is_estimated_at_the_size_it_is_resized_to(digits, monkeypatch,
                                                                                  tmp_path) -> None:
    import torchvision

    from search.trial.models import build_model
    from search.trial.train import training_memory
    from spaces.schema import TrialConfig

    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    config = TrialConfig.from_dict({"model": "mobilenet_v3_small", "batch_size": 64, "epochs": 1})
    cpu = torch.device("cpu")
    with torch.device("meta"):  # 8x8 digits: raised to the backbone's minimum without weights, 224 with them
        at_data_size = training_memory(build_model(config, digits.input_shape, 10), config, digits, cpu)
        at_native = training_memory(build_model(config.replace(input_size=224), digits.input_shape, 10), config,
                                    digits, cpu)
    assert at_native > 4 * at_data_size
    monkeypatch.setenv("CNNSEARCH_WORKER_MEMORY_MB", str((at_data_size * at_native) ** 0.5 / 1e6))
    space = parse_space({"params": {"model": "mobilenet_v3_small", "pretrained": True, "weights_path": str(weights),
                                    "batch_size": 64, "epochs": 1}}, source="test")
    (trial,) = _run_enqueued(optuna.create_study(direction="maximize"), StudySpec(space=space, dataset="digits"),
                             digits, [{}])
    assert (trial.state, trial.user_attrs["fail_reason"]) == (TrialState.PRUNED, "memory")


def test_a_model_too_big_for_the_workers_memory_is_refused_before_training(digits, monkeypatch) -> None:
    monkeypatch.setenv("CNNSEARCH_WORKER_MEMORY_MB", "20")
    space = parse_space({"params": {"width": {"type": "categorical", "choices": [4, 256]}, "depth": 2,
                                    "batch_size": 512, "epochs": 1}}, source="test")
    spec = StudySpec(space=space, dataset="digits")
    study = optuna.create_study(direction="maximize")
    small, big = _run_enqueued(study, spec, digits, [{"width": 4}, {"width": 256}])
    assert small.state == TrialState.COMPLETE, small.user_attrs.get("fail_message")
    assert (big.state, big.user_attrs["fail_reason"]) == (TrialState.PRUNED, "memory")
    assert big.intermediate_values == {} and "train_seconds" not in big.user_attrs, "refused before training"
    message = big.user_attrs["fail_message"]
    assert "20.0 MB available" in message and "needs about" in message, message


DEAD = {"lr": 0.1, "optimizer": "adam", "batch_norm": False, "loss": "focal", "label_smoothing": 0.15, "depth": 2,
        "width": 16, "growth": 1.0, "kernel": 5, "head": "gap", "dropout": 0.3, "batch_size": 32}
"""A config whose model dies on digits (Adam at lr 0.1 without batch norm): val accuracy at a class's share."""


@pytest.mark.parametrize("seed", [0, 1])
def test_a_trial_no_better_than_answering_the_largest_class_for_three_epochs_is_pruned(digits, seed) -> None:
    from search.study.objective import largest_class_share

    chance = largest_class_share(digits.val_y)
    assert 0.1 < chance < 0.11  # digits' val: 18 or 19 images of each of 10 classes
    spec = StudySpec(space=parse_space({"params": {**DEAD, "epochs": 6, "seed": seed}}, source="test"),
                     dataset="digits")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.HyperbandPruner(max_resource=6))
    (trial,) = _run_enqueued(study, spec, digits, [{}])
    assert (trial.state, trial.user_attrs["fail_reason"]) == (TrialState.PRUNED, "pruned")
    assert list(trial.intermediate_values) == [1, 2, 3], trial.user_attrs["fail_message"]
    assert max(trial.intermediate_values.values()) <= chance
    assert trial.user_attrs["fail_message"] == (
        f"pruned at chance at epoch 3: val accuracy at most {max(trial.intermediate_values.values()):.4f} in each "
        f"of the last 3 epochs, no better than always answering the largest class ({chance:.4f} of val)")


@pytest.mark.parametrize("how", ["no pruner", "start point"])
def test_a_trial_at_chance_runs_to_its_end_without_a_pruner_or_as_a_start_point(digits, how) -> None:
    start = {"start": [{}]} if how == "start point" else {}
    spec = StudySpec(space=parse_space({"params": {**DEAD, "epochs": 4, "seed": 1}, **start}, source="test"),
                     dataset="digits", budget=1, **({"pruner": "none"} if how == "no pruner" else {}))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.HyperbandPruner(max_resource=4))
    if start:
        fill_budget(study, spec)
    (trial,) = _run_enqueued(study, spec, digits, [] if start else [{}])
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_message")
    assert list(trial.intermediate_values) == [1, 2, 3, 4] and trial.value < 0.11  # at chance all along
