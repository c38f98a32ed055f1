"""Loading spaces: the presets, and the one-line error every kind of bad space file gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from spaces import SpaceError, list_presets, load_space, parse_space, preset_names
from spaces.schema import TrialConfig

PRESETS = ["backbones", "default", "finetune", "grid-table", "mnist-baseline", "tiny"]


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, strict: bool = True) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as caught:
        load_space(path, strict=strict)
    message = str(caught.value)
    assert "\n" not in message, "errors are one line"
    assert message.startswith(str(path) + ":"), "errors name the file first"
    return message


# --- presets ----------------------------------------------------------------------------


def test_every_preset_is_installed_listed_with_a_description_and_loads():
    assert preset_names() == PRESETS
    listed = dict(list_presets())
    assert sorted(listed) == PRESETS
    for name in PRESETS:
        assert listed[name], f"preset {name} has no description"
        space = load_space(name)
        assert space.name == name and space.source == name
        assert TrialConfig.from_dict(space.fixed).to_dict().items() >= space.fixed.items()


def test_default_preset_searches_what_run_promises_and_leaves_flips_off_for_digits():
    space = load_space("default")
    for name in ("lr", "batch_size", "depth", "width", "growth", "kernel", "dropout", "batch_norm",
                 "residual", "attention", "optimizer", "momentum", "weight_decay", "schedule",
                 "aug_translate", "aug_rotate", "aug_jitter", "aug_noise", "label_smoothing", "loss",
                 "init", "epochs"):
        assert name in space.params, name
    assert space.fixed.get("aug_flip", False) is False
    assert space.params["lr"].log
    assert space.params["epochs"].type == "int"
    assert space.params["momentum"].when == {"optimizer": ("sgd",)}
    assert space.params["weight_decay"].when == {"optimizer": ("adamw", "sgd")}


def test_mnist_baseline_is_one_fixed_config():
    space = load_space("mnist-baseline")
    assert space.params == {}
    assert space.grid() == [{}]
    expected = {"depth": 2, "width": 16, "growth": 2.0, "kernel": 5, "batch_norm": False, "head": "flatten",
                "fc_units": 0, "optimizer": "adam", "lr": 1e-3, "batch_size": 50, "schedule": "constant"}
    assert expected.items() <= space.config_from_params({}).items()


def test_load_space_accepts_a_path_object_and_a_string_path(tmp_path):
    text = "description: two knobs\nparams:\n  depth: {type: int, low: 1, high: 3}\n  epochs: 2\n"
    path = write(tmp_path, text, name="mine.yaml")
    for ref in (path, str(path)):
        space = load_space(ref)
        assert (space.name, space.source, space.description) == ("mine", str(path), "two knobs")
        assert list(space.params) == ["depth"] and space.fixed == {"epochs": 2}


def test_fixed_value_long_form_equals_the_plain_scalar():
    short = parse_space({"params": {"epochs": 3}})
    long = parse_space({"params": {"epochs": {"type": "fixed", "value": 3}}})
    assert short.fixed == long.fixed == {"epochs": 3}
    assert short.fingerprint() == long.fingerprint()


def test_params_are_ordered_so_conditions_come_after_what_they_name():
    space = parse_space({"params": {
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    }})
    assert list(space.params) == ["lr", "optimizer", "momentum"]


def test_unknown_names_are_allowed_only_when_not_strict(tmp_path):
    text = ("params:\n"
            "  edge_0_1: {type: categorical, choices: [none, skip_connect, nor_conv_3x3, avg_pool_3x3]}\n"
            "  epochs: 2\n")
    message = load_error(tmp_path, text)
    assert "'edge_0_1'" in message and "known parameters: model" in message
    space = load_space(tmp_path / "space.yaml", strict=False)
    assert list(space.params) == ["edge_0_1"]


def test_non_strict_space_still_checks_known_keys(tmp_path):
    message = load_error(tmp_path, "params:\n  cell: {type: bool}\n  dropout: 1.5\n", strict=False)
    assert "'dropout'" in message and "1.5" in message and "[0, 1)" in message


# --- errors: each names the file, the key, the bad value and what would be accepted ------

BAD_SPACES = {
    "yaml_syntax": ("params:\n  lr: {type: float, low: 0.1\n  depth: 3\n",
                    ["YAML syntax error at line 3", "expected ',' or '}'"]),
    "duplicate_key": ("params:\n  depth: 3\n  width: 8\n  depth: 4\n",
                      ["line 4", "duplicate key 'depth'", "first given at line 2"]),
    "top_level_list": ("- lr\n- depth\n", ["top level is a list", "['lr', 'depth']", "`params:`"]),
    "empty_file": ("", ["empty", "`params:`"]),
    "no_params": ("description: nothing to search\n", ["no `params:` section", "params: {lr:"]),
    "params_not_mapping": ("params: [lr, depth]\n", ["params is a list", "mapping of parameter name"]),
    "unknown_top_key": ("parms: {}\n", ["'parms'", "did you mean 'params'", "description, params"]),
    "unknown_type": ("params:\n  lr: {type: floaat, low: 0.1, high: 1.0}\n",
                     ["param 'lr'", "type='floaat'", "did you mean 'float'",
                      "valid types: float, int, categorical, bool, fixed"]),
    "missing_type": ("params:\n  lr: {low: 0.1, high: 1.0}\n", ["param 'lr'", "no `type:`", "float, int"]),
    "low_above_high": ("params:\n  lr: {type: float, low: 0.1, high: 0.001}\n",
                       ["param 'lr'", "low=0.1", "high=0.001", "low must be <= high"]),
    "log_low_zero": ("params:\n  weight_decay: {type: float, low: 0.0, high: 0.01, log: true}\n",
                     ["param 'weight_decay'", "log: true needs low > 0", "low=0.0"]),
    "log_int_low_zero": ("params:\n  aug_translate: {type: int, low: 0, high: 4, log: true}\n",
                         ["param 'aug_translate'", "low > 0", "low=0"]),
    "step_with_log": ("params:\n  lr: {type: float, low: 0.001, high: 0.1, log: true, step: 0.001}\n",
                      ["param 'lr'", "step=0.001", "cannot be combined with log"]),
    "step_not_dividing": ("params:\n  dropout: {type: float, low: 0.0, high: 0.5, step: 0.2}\n",
                          ["param 'dropout'", "high=0.5", "step", "use high: 0.4"]),
    "int_step_not_dividing": ("params:\n  width: {type: int, low: 8, high: 30, step: 8}\n",
                              ["param 'width'", "high=30", "use high: 24"]),
    "int_bound_fraction": ("params:\n  depth: {type: int, low: 1, high: 2.5}\n",
                           ["param 'depth'", "high=2.5", "not an integer"]),
    "bound_not_a_number": ("params:\n  lr: {type: float, low: 1e-4, high: 0.1}\n",
                           ["param 'lr'", "low='1e-4'", "not a number", "1.0e-4"]),
    "missing_bound": ("params:\n  lr: {type: float, high: 0.1}\n", ["param 'lr'", "needs `low:`"]),
    "log_not_bool": ("params:\n  lr: {type: float, low: 0.001, high: 0.1, log: maybe}\n",
                     ["param 'lr'", "log='maybe'", "true"]),
    "empty_choices": ("params:\n  batch_size: {type: categorical, choices: []}\n",
                      ["param 'batch_size'", "choices=[]", "non-empty list", "choices: [32, 64, 128]"]),
    "choices_not_list": ("params:\n  batch_size: {type: categorical, choices: 32}\n",
                         ["param 'batch_size'", "choices=32", "non-empty list"]),
    "non_scalar_choice": ("params:\n  batch_size: {type: categorical, choices: [[32, 64], 128]}\n",
                          ["param 'batch_size'", "[32, 64]", "is a list", "single values"]),
    "duplicate_choice": ("params:\n  batch_size: {type: categorical, choices: [32, 64, 32]}\n",
                         ["param 'batch_size'", "choice 32 is given twice"]),
    "unknown_spec_key": ("params:\n  lr: {type: float, low: 0.001, high: 0.1, lgo: true}\n",
                         ["param 'lr'", "unknown key 'lgo'", "did you mean 'log'",
                          "accepted keys: type, low, high, log, step, when"]),
    "range_key_on_categorical": ("params:\n  kernel: {type: categorical, choices: [3, 5], low: 3}\n",
                                 ["param 'kernel'", "unknown key 'low'",
                                  "accepted keys: type, choices, when"]),
    "plain_list_value": ("params:\n  batch_size: [32, 64]\n",
                         ["param 'batch_size'", "[32, 64]", "type: categorical"]),
    "condition_unknown_param": (
        "params:\n  optimizer: {type: categorical, choices: [sgd, adam]}\n"
        "  momentum: {type: float, low: 0.8, high: 0.99, when: {optimiser: sgd}}\n",
        ["param 'momentum'", "unknown parameter 'optimiser'", "did you mean 'optimizer'"]),
    "condition_impossible_value": (
        "params:\n  optimizer: {type: categorical, choices: [sgd, adam]}\n"
        "  momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: [sgd, adamw]}}\n",
        ["param 'momentum'", "when.optimizer='adamw'", "can never hold", "one of sgd, adam"]),
    "condition_on_fixed_other_value": (
        "params:\n  optimizer: adam\n"
        "  momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}\n",
        ["param 'momentum'", "when.optimizer='sgd'", "only 'adam'"]),
    "condition_bool_vs_int": (
        "params:\n  residual: {type: bool}\n  depth: {type: int, low: 1, high: 3, when: {residual: 1}}\n",
        ["param 'depth'", "when.residual=1", "true or false"]),
    "condition_not_mapping": ("params:\n  optimizer: {type: categorical, choices: [sgd]}\n"
                              "  momentum: {type: float, low: 0.8, high: 0.9, when: optimizer}\n",
                              ["param 'momentum'", "when='optimizer'", "when: {optimizer: sgd}"]),
    "condition_cycle": (
        "params:\n  optimizer: {type: categorical, choices: [sgd, adam], when: {momentum: 0.9}}\n"
        "  momentum: {type: categorical, choices: [0.9, 0.99], when: {optimizer: sgd}}\n",
        ["condition cycle", "optimizer -> momentum -> optimizer"]),
    "condition_on_itself": ("params:\n  depth: {type: int, low: 1, high: 3, when: {depth: 2}}\n",
                            ["param 'depth'", "condition cycle depth -> depth"]),
    "unknown_parameter": ("params:\n  learning_rate: {type: float, low: 0.001, high: 0.1}\n",
                          ["unknown parameter 'learning_rate'", "known parameters: model"]),
    "range_outside_domain": ("params:\n  dropout: {type: float, low: 0.0, high: 1.5}\n",
                             ["param 'dropout' high", "dropout=1.5", "a number in [0, 1)"]),
    "choice_outside_domain": ("params:\n  optimizer: {type: categorical, choices: [sgd, rmsprop]}\n",
                              ["param 'optimizer' choices", "optimizer='rmsprop'", "'sgd', 'adam', 'adamw'"]),
    "fixed_outside_domain": ("params:\n  epochs: 0\n", ["param 'epochs' value", "epochs=0", "[1, 1000]"]),
    "int_range_hits_a_value_the_key_refuses": (
        "params:\n  kernel: {type: int, low: 3, high: 7}\n",
        ["param 'kernel' range", "kernel=4", "one of 1, 3, 5, 7, 9, 11", "type: categorical"]),
    "float_range_for_int_key": ("params:\n  depth: {type: float, low: 1, high: 3}\n",
                                ["param 'depth'", "type=float", "an integer in [1, 8]", "use type: int"]),
    "range_for_text_key": ("params:\n  optimizer: {type: int, low: 1, high: 3}\n",
                           ["param 'optimizer'", "an int range", "'sgd'", "use type: categorical"]),
    "bool_for_number_key": ("params:\n  dropout: {type: bool}\n",
                            ["param 'dropout'", "type=bool", "a number in [0, 1)"]),
    "exponent_text_choice": ("params:\n  lr: {type: categorical, choices: [1e-3, 1.0e-2]}\n",
                             ["param 'lr' choices", "lr='1e-3'", "1.0e-4"]),
    "description_not_text": ("description: [a, b]\nparams: {}\n",
                             ["description=['a', 'b']", "one line of text"]),
    "full_grid_not_bool": ("full_grid: yes please\nparams: {}\n",
                           ["full_grid='yes please'", "not true or false", "full_grid: true"]),
    # Keys that would do nothing in every trial: refused, with the reason and the fix.
    "unfreeze_without_freeze": ("params:\n  model: resnet18\n  unfreeze_epoch: 3\n",
                                ["param 'unfreeze_epoch'", "unfreeze_epoch=3 has no effect",
                                 "freeze is none", "(freeze left at the default)", "give freeze: body or stages"]),
    "unfreeze_after_the_last_epoch": ("params:\n  freeze: body\n  unfreeze_epoch: 6\n  epochs: 4\n",
                                      ["unfreeze_epoch=6 has no effect", "training ends after epoch 4",
                                       "give unfreeze_epoch <= epochs"]),
    "unfreeze_searched_always_after_the_last_epoch": (
        "params:\n  freeze: stages\n  unfreeze_epoch: {type: int, low: 4, high: 6}\n"
        "  epochs: {type: categorical, choices: [2, 3]}\n",
        ["unfreeze_epoch (searched: int [4, 6]) has no effect", "for every value of the searched epochs"]),
    "unfreeze_at_epoch_one": ("params:\n  freeze: body\n  unfreeze_epoch: 1\n",
                              ["unfreeze_epoch=1 has no effect", "nothing is ever frozen", "2 or later"]),
    "freeze_stages_without_stages": ("params:\n  freeze: body\n  freeze_stages: 2\n",
                                     ["param 'freeze_stages'", "freeze is body", "give freeze: stages"]),
    "body_lr_of_a_body_that_never_trains": (
        "params:\n  model: resnet18\n  freeze: body\n  body_lr_mult: {type: float, low: 0.01, high: 1.0, log: true}\n",
        ["param 'body_lr_mult'", "the body never trains", "(unfreeze_epoch left at the default)"]),
    "gray_to_rgb_from_scratch": ("params:\n  model: resnet18\n  gray_to_rgb: replicate\n",
                                 ["param 'gray_to_rgb'", "pretrained is false", "set pretrained: true"]),
    "weights_path_from_scratch": ("params:\n  model: resnet18\n  pretrained: false\n  weights_path: w.pth\n",
                                  ["param 'weights_path'", "weights_path='w.pth' has no effect",
                                   "no weights are loaded"]),
    "input_size_of_the_custom_family": ("params:\n  input_size: 64\n",
                                        ["param 'input_size'", "model 'cnn' is built for the data's size",
                                         "pick a backbone"]),
    "stem_stride_of_a_backbone": ("params:\n  model: resnet18\n  stem_stride: 2\n",
                                  ["param 'stem_stride'", "stem_stride=2 has no effect",
                                   "model 'resnet18' has its own first layer", "give model: cnn"]),
    "pretrained_without_weights_for_any_model": (
        "params:\n  pretrained: true\n  model: {type: categorical, choices: [cnn, lenet5]}\n",
        ["param 'pretrained'", "pretrained=True cannot be used", "no published pretrained weights",
         "for every value of the searched model", "resnet18"]),
    "full_grid_of_a_continuous_space": (
        "full_grid: true\nparams:\n  lr: {type: float, low: 0.001, high: 0.1}\n",
        ["grid search needs a finite set of values", "'lr' is a continuous float", "add `step:`"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_gets_one_line_naming_file_key_value_and_fix(tmp_path, case):
    text, expected = BAD_SPACES[case]
    message = load_error(tmp_path, text)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_parse_space_names_its_source_in_errors():
    with pytest.raises(SpaceError, match=r"^exported recipe: param 'lr': low=0.1 is greater than high=0.01"):
        parse_space({"params": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}, source="exported recipe")


def test_preset_errors_name_the_preset():
    space = load_space("tiny")
    with pytest.raises(SpaceError, match=r"^tiny: params: 'lrr' is not a searched parameter"):
        space.config_from_params({"lrr": 0.01})


def test_unknown_preset_lists_the_presets():
    with pytest.raises(SpaceError) as caught:
        load_space("defualt")
    message = str(caught.value)
    assert message.startswith("defualt: unknown space (did you mean 'default'?)")
    assert "default, finetune, grid-table, mnist-baseline, tiny" in message


def test_missing_file_lists_the_presets(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError) as caught:
        load_space(missing)
    message = str(caught.value)
    assert message.startswith(f"{missing}: space file not found")
    assert "backbones, default" in message


def _alias_bomb(levels: int = 9) -> str:
    """YAML whose aliases expand to 10**levels strings (a "billion laughs" at 9 levels) in 1 KB of text."""
    lines = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["description", "params"])
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, where):
    text = ("params:\n  epochs: 1\n" if where == "description" else "") + f"{where}:\n" + _alias_bomb()
    message = load_error(tmp_path, text)
    assert "alias" in message and "expands" in message


@pytest.mark.parametrize("text", [
    # The combination occurs in some trials only: each such trial notes it (tests/search/test_finetune.py).
    "params:\n  freeze: {type: categorical, choices: [none, body]}\n  unfreeze_epoch: {type: int, low: 2, high: 3}\n",
    "params:\n  freeze: body\n  unfreeze_epoch: {type: int, low: 2, high: 6}\n  epochs: 4\n",
    "params:\n  pretrained: true\n  model: {type: categorical, choices: [lenet5, resnet18]}\n",
    "params:\n  stem_stride: 4\n  model: {type: categorical, choices: [cnn, resnet18]}\n",
    # A `when` keeps the key to the trials where it acts.
    "params:\n  freeze: {type: categorical, choices: [none, body]}\n"
    "  unfreeze_epoch: {type: int, low: 2, high: 3, when: {freeze: body}}\n",
    # Benchmark spaces (not strict) name keys of their own.
    "params:\n  freeze_stages: 2\n",
])
def test_a_combination_that_only_some_trials_hold_is_accepted(tmp_path, text):
    load_space(write(tmp_path, text), strict="freeze_stages: 2" not in text)


def test_a_builders_space_may_set_input_size_pretrained_and_stem_stride_its_builder_reads_them(tmp_path):
    (tmp_path / "nets.py").write_text("def build(config, input_shape, num_classes):\n    return None\n")
    space = load_space(write(tmp_path, 'model: {builder: "nets.py:build"}\nparams:\n  input_size: 64\n'
                                      "  pretrained: true\n  stem_stride: 2\n"))
    assert space.fixed == {"input_size": 64, "pretrained": True, "stem_stride": 2}
