"""A space naming its own builder: the builder's declared keys are searched and checked like config keys."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from spaces import SpaceError, load_space, parse_space

NETS = '''
def build(config, input_shape, num_classes, *, channels=16, drop=0.1, act="relu", fused=False, norm=None):
    return None


def needs_a_default(config, input_shape, num_classes, *, channels):
    return None


def shadows(config, input_shape, num_classes, *, dropout=0.1):
    return None


def too_few(config):
    return None


def takes_a_list(config, input_shape, num_classes, *, sizes=[1, 2]):
    return None
'''


def _space(tmp_path: Path, body: str, ref: str = "nets.py:build") -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    path = tmp_path / "space.yaml"
    path.write_text(f"model: {{builder: \"{ref}\"}}\nparams:\n{body}")
    return path


def test_the_keys_a_builder_declares_are_searched_and_travel_in_the_config(tmp_path: Path) -> None:
    space = load_space(_space(tmp_path, "  channels: {type: int, low: 8, high: 32}\n  drop: {type: float, low: 0, "
                                        "high: 0.5}\n  act: gelu\n  lr: {type: float, low: 0.001, high: 0.1}\n"))
    config = space.suggest(optuna.trial.FixedTrial({"channels": 12, "drop": 0.25, "lr": 0.01}))
    assert config.builder == f"{tmp_path / 'nets.py'}:build"  # absolute: workers elsewhere find the same file
    assert config.builder_args == {"channels": 12, "drop": 0.25, "act": "gelu", "fused": False, "norm": None}
    assert config.lr == 0.01
    again = parse_space(space.to_dict(), source="study 's'")
    assert again == space and again.builder.sha256 == space.builder.sha256


def test_another_builder_is_another_space(tmp_path: Path) -> None:
    one = load_space(_space(tmp_path, "  channels: 8\n"))
    (tmp_path / "other.py").write_text(NETS)
    two = load_space(_space(tmp_path, "  channels: 8\n", ref="other.py:build"))
    assert one.fingerprint() != two.fingerprint()


@pytest.mark.parametrize(("body", "message"), [
    ("  channels: {type: float, low: 1, high: 4}\n",
     "param 'channels': type=float cannot give channels, which takes an integer; use type: int"),
    ("  act: 3\n", "param 'act' value: act=3 is not accepted; act takes text"),
    ("  fused: {type: categorical, choices: [1, 2]}\n",
     "param 'fused' choices: fused=1 is not accepted; fused takes true or false"),
    ("  chanels: 8\n", "unknown parameter 'chanels' (did you mean 'channels'?); builder "),
    ("  builder_args: 3\n", "'builder_args' is set by the space's top-level `model: {builder: ...}`"),
    ("  model: resnet18\n", "'model' is set by `model: {builder: ...}` (the builder is the model)"),
])
def test_a_bad_value_for_a_builder_key_is_refused_at_load(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpaceError, match="^" + str(tmp_path / "space.yaml")) as err:
        load_space(_space(tmp_path, body))
    assert message in str(err.value)


def test_a_none_default_takes_any_single_value(tmp_path: Path) -> None:
    space = load_space(_space(tmp_path, "  norm: {type: categorical, choices: [batch, null, 2, true]}\n"))
    assert space.params["norm"].choices == ("batch", None, 2, True)


@pytest.mark.parametrize(("ref", "message"), [
    ("nets.py:needs_a_default", "keyword argument 'channels' has no default; give it one"),
    ("nets.py:shadows", "declares 'dropout', a cnnsearch config key; rename the argument, or drop it and read "
                        "config['dropout']"),
    ("nets.py:too_few", "does not take (config, input_shape, num_classes)"),
    ("nets.py:takes_a_list", "keyword argument sizes=[1, 2] is a list; a searchable default is"),
    ("nets.py:missing", "has no function 'missing'; its functions: build, needs_a_default, shadows, takes_a_list, "
                        "too_few"),
    ("gone.py:build", "builder file " ),
    ("no_such_module_xyz.nets:build", "builder module 'no_such_module_xyz.nets' cannot be imported"),
    ("build", "builder='build' is not a builder reference"),
])
def test_a_builder_that_cannot_be_used_is_refused_at_load(tmp_path: Path, ref: str, message: str) -> None:
    with pytest.raises(SpaceError, match="space.yaml: model") as err:
        load_space(_space(tmp_path, "  epochs: 1\n", ref=ref))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_builder_module_is_imported_from_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pkgs" / "mynets_space").mkdir(parents=True)
    (tmp_path / "pkgs" / "mynets_space" / "__init__.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.delitem(sys.modules, "mynets_space", raising=False)
    space = load_space(_space(tmp_path, "  channels: 8\n", ref="mynets_space:build"))
    assert space.builder.ref == "mynets_space:build"
    assert space.builder.path == str(tmp_path / "pkgs" / "mynets_space" / "__init__.py")


def test_a_space_without_a_builder_cannot_set_one_as_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  builder: nets.py:build\n")
    with pytest.raises(SpaceError, match="'builder' is set by the space's top-level `model: {builder: ...}`, not as "
                                         "a parameter"):
        load_space(path)
