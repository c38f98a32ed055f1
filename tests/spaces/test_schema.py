"""The trial config: one frozen record of every key, checked once, stored as a plain dict."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from spaces import SpaceError
from spaces.schema import CONFIG_KEYS, DEFAULT_CONFIG, TrialConfig

CHANGED = {"model": "cnn", "depth": 3, "layers": 7, "growth": 1.5, "kernel": 5, "attention": "both",
           "optimizer": "sgd", "lr": 0.05, "momentum": 0.95, "weights_path": None, "aug_rotate": 12.5,
           "aug_flip": True, "seed": 123}


def test_keys_and_defaults_are_the_fields_of_the_config() -> None:
    assert list(CONFIG_KEYS) == [f.name for f in dataclasses.fields(TrialConfig)]
    assert TrialConfig().to_dict() == DEFAULT_CONFIG
    assert CONFIG_KEYS["layers"].kind is int and CONFIG_KEYS["layers"].nullable
    assert CONFIG_KEYS["growth"].kind is float and not CONFIG_KEYS["growth"].nullable


def test_config_round_trips_through_json_and_yaml_unchanged() -> None:
    config = TrialConfig.from_dict(CHANGED)
    data = config.to_dict()
    assert list(data) == list(CONFIG_KEYS)
    assert json.loads(json.dumps(data)) == data
    assert yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) == data
    assert TrialConfig.from_dict(json.loads(json.dumps(data))) == config
    assert TrialConfig.from_dict(yaml.safe_load(yaml.safe_dump(data))) == config


def test_an_old_partial_recipe_config_takes_the_defaults() -> None:
    config = TrialConfig.from_dict(yaml.safe_load("depth: 1\nwidth: 8\nlr: 0.01\n"))
    assert (config.depth, config.width, config.lr) == (1, 8, 0.01)
    assert {name: config[name] for name in CONFIG_KEYS if name not in ("depth", "width", "lr")} == {
        name: value for name, value in DEFAULT_CONFIG.items() if name not in ("depth", "width", "lr")}


def test_reads_as_a_read_only_mapping() -> None:
    config = TrialConfig.from_dict(CHANGED)
    assert config["lr"] == config.lr == 0.05
    assert set(config) == set(CONFIG_KEYS) and len(config) == len(CONFIG_KEYS)
    assert dict(config) == config.to_dict()
    assert CHANGED.items() <= config.items()
    assert "where" not in config and config.get("lrr") is None
    with pytest.raises(KeyError):
        config["lrr"]  # noqa: B018


def test_config_is_frozen() -> None:
    config = TrialConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config["lr"] = 0.1  # type: ignore[index]
    assert config.lr == DEFAULT_CONFIG["lr"]


def test_replace_checks_the_changes_and_leaves_the_original_alone() -> None:
    config = TrialConfig.from_dict({"width": 8})
    seeded = config.replace(seed=7)
    assert seeded.seed == 7 and seeded.width == 8 and config.seed == 0
    assert seeded != config and seeded == TrialConfig.from_dict({"width": 8, "seed": 7})
    with pytest.raises(SpaceError, match=r"^config: seed=-1 is not accepted; seed takes an integer >= 0$"):
        config.replace(seed=-1)
    with pytest.raises(SpaceError, match=r"unknown parameter 'sed' \(did you mean 'seed'\?\)"):
        config.replace(sed=1)


@pytest.mark.parametrize(("partial", "message"), [
    ({"lr": "fast"}, r"^recipe: lr='fast' is not accepted; lr takes a number in \[1e-07, 10\]$"),
    ({"dropout": 1.0}, r"^recipe: dropout=1.0 is not accepted; dropout takes a number in \[0, 1\)$"),
    ({"kernel": 4}, r"^recipe: kernel=4 is not accepted; kernel takes one of 1, 3, 5, 7, 9, 11$"),
    ({"depth": True}, r"^recipe: depth=True is not accepted"),
    ({"learning_rate": 0.1}, r"^recipe: unknown parameter 'learning_rate' \(did you mean 'lr'\?\); known "),
])
def test_bad_keys_and_values_are_one_line_naming_where(partial: dict, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        TrialConfig.from_dict(partial, where="recipe")


def test_a_config_built_directly_is_checked_too() -> None:
    with pytest.raises(SpaceError, match=r"^config: dropout=1.5 is not accepted"):
        TrialConfig(dropout=1.5)


def test_from_dict_returns_a_config_as_it_is() -> None:
    config = TrialConfig.from_dict({"width": 8})
    assert TrialConfig.from_dict(config) is config
