"""What a loaded space does: suggest configs, enumerate its grid, name itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from spaces import SpaceError, load_space, parse_space, preset_names
from spaces.schema import CONFIG_KEYS, TrialConfig

REPO = Path(__file__).resolve().parents[2]

CONDITIONAL = {
    "description": "optimizer with conditional knobs",
    "params": {
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"]},
        "momentum": {"type": "categorical", "choices": [0.9, 0.99], "when": {"optimizer": "sgd"}},
        "weight_decay": {"type": "categorical", "choices": [0.0, 1e-4],
                         "when": {"optimizer": ["sgd", "adamw"]}},
        "batch_norm": {"type": "bool"},
        "epochs": 2,
    },
}

SGD_PARAMS = {"lr": 1e-3, "batch_size": 32, "optimizer": "sgd", "momentum": 0.95, "weight_decay": 1e-4,
              "schedule": "cosine", "epochs": 3, "loss": "focal", "label_smoothing": 0.1, "depth": 2,
              "width": 16, "growth": 1.5, "kernel": 3, "head": "flatten", "dropout": 0.1, "batch_norm": True,
              "residual": False,
              "attention": "channel", "init": "kaiming", "aug_translate": 2, "aug_rotate": 5.0,
              "aug_jitter": 0.1, "aug_noise": 0.05, "hog": False}


def assert_trainable(config: TrialConfig) -> None:
    """A config a trial can train from: every key, valid values, unchanged by JSON."""
    assert isinstance(config, TrialConfig)
    assert set(config) == set(CONFIG_KEYS)
    assert TrialConfig.from_dict(config.to_dict()) == config
    assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- suggest ----------------------------------------------------------------------------


def test_suggest_with_fixed_trial_gives_the_complete_config():
    space = load_space("default")
    config = space.suggest(optuna.trial.FixedTrial(SGD_PARAMS))
    assert_trainable(config)
    assert SGD_PARAMS.items() <= config.items()
    assert config["aug_flip"] is False


def test_inactive_conditional_params_are_not_asked_and_keep_their_default():
    space = load_space("default")
    adam = {k: v for k, v in SGD_PARAMS.items() if k not in ("momentum", "weight_decay")}
    adam["optimizer"] = "adam"
    trial = optuna.trial.FixedTrial(adam)  # FixedTrial raises if asked for a param it was not given
    config = space.suggest(trial)
    assert_trainable(config)
    assert config["momentum"] == CONFIG_KEYS["momentum"].default
    assert config["weight_decay"] == CONFIG_KEYS["weight_decay"].default
    assert "momentum" not in trial.params and "weight_decay" not in trial.params


def test_tpe_study_suggests_complete_configs_and_params_rebuild_them():
    space = load_space("default")
    configs = {}

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        configs[trial.number] = config
        return config["lr"] * config["depth"] + config["dropout"]

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=5))
    study.optimize(objective, n_trials=25)
    optimizers = set()
    for trial in study.trials:
        config = configs[trial.number]
        assert_trainable(config)
        assert space.config_from_params(trial.params) == config
        optimizers.add(config["optimizer"])
        assert ("momentum" in trial.params) == (config["optimizer"] == "sgd")
        assert ("weight_decay" in trial.params) == (config["optimizer"] in ("sgd", "adamw"))
        for name, value in trial.params.items():
            assert trial.distributions[name] == space.distributions()[name]
            assert space.params[name].contains(value)
    assert len(optimizers) > 1, "25 trials should try more than one optimizer"


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_suggests_trainable_configs(name):
    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        config = space.suggest(trial)
        assert_trainable(config)
        assert space.fixed.items() <= config.items()
        study.tell(trial, 0.0)


def test_non_strict_space_config_holds_only_its_own_keys():
    cell = {"params": {
        "edge_0_1": {"type": "categorical", "choices": ["none", "skip_connect", "nor_conv_3x3"]},
        "edge_0_2": {"type": "categorical", "choices": ["none", "avg_pool_3x3"],
                     "when": {"edge_0_1": ["skip_connect", "nor_conv_3x3"]}},
        "epochs": 12,
    }}
    space = parse_space(cell, source="nb201.yaml", strict=False)
    assert space.suggest(optuna.trial.FixedTrial({"edge_0_1": "none"})) == {"edge_0_1": "none", "epochs": 12}
    both = space.suggest(optuna.trial.FixedTrial({"edge_0_1": "skip_connect", "edge_0_2": "avg_pool_3x3"}))
    assert both == {"edge_0_1": "skip_connect", "edge_0_2": "avg_pool_3x3", "epochs": 12}


def test_config_from_params_refuses_values_outside_the_space():
    space = load_space("tiny")
    params = {"depth": 1, "width": 8, "epochs": 1, "lr": 0.5, "batch_norm": True, "attention": "none",
              "optimizer": "adam"}
    outside = r"^tiny: params: lr=0.5 is outside the space; lr takes float \[0.001, 0.03\] log$"
    with pytest.raises(SpaceError, match=outside):
        space.config_from_params(params)
    del params["depth"]
    with pytest.raises(SpaceError, match=r"active parameter 'depth' has no value"):
        space.config_from_params(params)


def test_is_active_follows_conditions_through_chains():
    space = parse_space({"params": {
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"], "when": {"batch_norm": True}},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        "batch_norm": {"type": "bool"},
    }})
    assert space.is_active("momentum", {"batch_norm": True, "optimizer": "sgd"})
    assert not space.is_active("momentum", {"batch_norm": True, "optimizer": "adam"})
    # optimizer itself is inactive without batch norm, so its leftover value does not count
    assert not space.is_active("momentum", {"batch_norm": False, "optimizer": "sgd"})
    assert space.is_active("batch_norm", {})
    with pytest.raises(SpaceError, match="'dropout' is not a parameter of this space"):
        space.is_active("dropout", {})


def test_condition_on_a_bool_does_not_match_an_int():
    space = parse_space({"params": {
        "residual": {"type": "bool"},
        "depth": {"type": "int", "low": 1, "high": 3, "when": {"residual": True}},
    }})
    assert space.is_active("depth", {"residual": True})
    assert not space.is_active("depth", {"residual": 1})


# --- grid -------------------------------------------------------------------------------


def test_grid_table_has_243_unique_trainable_points():
    space = load_space("grid-table")
    points = space.grid()
    assert len(points) == space.grid_size() == 243
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 243
    assert {p["layers"] for p in points} == {5, 10, 15}
    for point in points:
        assert set(point) == {"lr", "batch_size", "epochs", "layers", "kernel"}
        config = space.config_from_params(point)
        assert config["depth"] == 3 and config["optimizer"] == "sgd"
    assert_trainable(space.config_from_params(points[-1]))


def test_grid_leaves_out_inactive_params_and_has_no_duplicates():
    space = parse_space(CONDITIONAL)
    points = space.grid()
    # sgd: 2 momenta x 2 decays; adam: nothing more; adamw: 2 decays -- each x 2 batch_norm
    assert len(points) == space.grid_size() == (4 + 1 + 2) * 2
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    assert {"batch_norm": False, "optimizer": "adam"} in points
    assert all("momentum" not in p for p in points if p["optimizer"] != "sgd")


def test_grid_points_run_through_an_optuna_study_as_enqueued_trials():
    space = parse_space(CONDITIONAL)
    study = optuna.create_study()
    for point in space.grid():
        study.enqueue_trial(point)
    study.optimize(lambda trial: float(len(space.suggest(trial))), n_trials=space.grid_size())
    assert [t.params for t in study.trials] == space.grid()


def test_grid_order_does_not_depend_on_key_order():
    reordered = {"params": dict(reversed(CONDITIONAL["params"].items()))}
    assert parse_space(reordered).grid() == parse_space(CONDITIONAL).grid()


def test_grid_enumerates_ranges_by_step_with_clean_floats():
    space = parse_space({"params": {
        "dropout": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
        "width": {"type": "int", "low": 8, "high": 32, "step": 8},
        "depth": {"type": "int", "low": 1, "high": 4, "log": True},
    }})
    points = space.grid()
    assert sorted({p["dropout"] for p in points}) == [0.1, 0.2, 0.3]
    assert sorted({p["width"] for p in points}) == [8, 16, 24, 32]
    assert sorted({p["depth"] for p in points}) == [1, 2, 3, 4]
    assert len(points) == 3 * 4 * 4


def test_grid_refuses_a_continuous_float():
    space = load_space("tiny")
    expected = ("tiny: grid search needs a finite set of values; param 'lr' is a continuous float "
                "[0.001, 0.03] without step (add `step:` or use type: categorical)")
    with pytest.raises(SpaceError) as caught:
        space.grid()
    assert str(caught.value) == expected
    with pytest.raises(SpaceError, match="continuous float"):
        space.grid_size()


def test_grid_refuses_more_points_than_it_can_hold():
    space = parse_space({"params": {name: {"type": "int", "low": 1, "high": 200}
                                    for name in ("width", "fc_units", "batch_size")}})
    assert space.grid_size() == 200 ** 3
    with pytest.raises(SpaceError, match="8000000 points, more than 1000000"):
        space.grid()


# --- fingerprint and canonical form ------------------------------------------------------


def test_fingerprint_is_stable_in_another_process():
    code = "from spaces import load_space; print(load_space('default').fingerprint())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True, timeout=60)
    here = load_space("default").fingerprint()
    assert other.stdout.strip() == here
    assert len(here) == 16 and int(here, 16) >= 0


def test_fingerprint_ignores_key_order_spelling_and_description():
    base = parse_space(CONDITIONAL)
    shuffled = {"description": "another text", "params": {
        name: dict(reversed(spec.items())) if isinstance(spec, dict) else spec
        for name, spec in reversed(CONDITIONAL["params"].items())}}
    shuffled["params"]["weight_decay"]["when"] = {"optimizer": ["adamw", "sgd", "sgd"]}
    shuffled["params"]["epochs"] = {"type": "fixed", "value": 2}
    assert parse_space(shuffled).fingerprint() == base.fingerprint()
    growth = parse_space({"params": {"growth": {"type": "categorical", "choices": [1, 2]}}})
    assert growth.fingerprint() == parse_space(
        {"params": {"growth": {"type": "categorical", "choices": [1.0, 2.0]}}}).fingerprint()


@pytest.mark.parametrize("change", [
    ("lr", "high", 0.05), ("lr", "log", False), ("epochs", "high", 7),
    ("momentum", "when", {"optimizer": "adam"}),
])
def test_fingerprint_changes_with_the_definition(change):
    name, key, value = change
    data = yaml.safe_load(load_space("default").to_yaml())
    before = parse_space(data).fingerprint()
    data["params"][name][key] = value
    assert parse_space(data).fingerprint() != before


def test_fingerprint_changes_with_a_fixed_value():
    data = load_space("grid-table").to_dict()
    before = parse_space(data).fingerprint()
    data["params"]["depth"] = 4
    assert parse_space(data).fingerprint() != before


@pytest.mark.parametrize("name", preset_names())
def test_to_dict_and_to_yaml_round_trip(name):
    space = load_space(name)
    for data in (space.to_dict(), yaml.safe_load(space.to_yaml())):
        again = parse_space(data, source=name)
        assert again.fingerprint() == space.fingerprint()
        assert again.params == space.params and again.fixed == space.fixed
        assert again.description == space.description


def test_start_points_are_validated_and_round_trip(tmp_path):
    good = {"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}, "depth": {"type": "int",
            "low": 1, "high": 3}}, "start": [{"lr": 0.01, "depth": 2}]}
    space = parse_space(good, source="s.yaml")
    assert space.start == [{"lr": 0.01, "depth": 2}]
    assert parse_space(space.to_dict(), source="again.yaml").start == space.start
    assert space.fingerprint() == parse_space({"params": good["params"]}, source="x.yaml").fingerprint()
    with pytest.raises(SpaceError, match=r"s.yaml: start\[0\]: depth=7 is outside the space; depth takes"):
        parse_space({**good, "start": [{"depth": 7}]}, source="s.yaml")
    with pytest.raises(SpaceError, match=r"s.yaml: start\[0\]: 'width' is not a searched parameter"):
        parse_space({**good, "start": [{"width": 8}]}, source="s.yaml")


def test_low_cost_is_validated_round_trips_and_leaves_the_fingerprint(tmp_path):
    params = {"epochs": {"type": "int", "low": 2, "high": 20}, "width": {"type": "int", "low": 8, "high": 32},
              "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
              "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}}}
    space = parse_space({"params": params, "low_cost": {"epochs": 2, "width": 8}}, source="s.yaml")
    assert space.low_cost == {"epochs": 2, "width": 8}
    assert parse_space(space.to_dict(), source="again.yaml").low_cost == space.low_cost
    (tmp_path / "s.yaml").write_text(space.to_yaml())
    assert load_space(str(tmp_path / "s.yaml")).low_cost == space.low_cost
    assert space.fingerprint() == parse_space({"params": params}, source="x.yaml").fingerprint()
    for bad, message in [({"epochs": 1}, r"s.yaml: low_cost: epochs=1 is outside the space; epochs takes"),
                         ({"epoch": 2}, r"s.yaml: low_cost: 'epoch' is not a searched parameter \(did you mean "
                                        r"'epochs'\?\)"),
                         ([{"epochs": 2}], r"s.yaml: low_cost=.* is not a mapping of searched parameter to value")]:
        with pytest.raises(SpaceError, match=message):
            parse_space({"params": params, "low_cost": bad}, source="s.yaml")
    odd = parse_space({"params": params, "low_cost": {"optimizer": "adam", "momentum": 0.9}}, source="s.yaml")
    assert odd.start_warnings() == ["s.yaml: low_cost: momentum=0.9 is ignored: momentum is searched only when "
                                    "optimizer is sgd (the point has adam)"]
