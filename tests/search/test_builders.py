"""Your own model: a space's builder trains in a study, is pruned, exports, retrains; its failures stay its trial's."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main

# A logistic regression on the pixels, or (dead: true) a network that always answers class 0: it
# cannot beat the first, so a successive-halving pruner stops it after its first epoch.
# `float(torch.ones(1).sum())` reads a tensor's value, which the meta device cannot give: the
# memory check before each trial has to build this model on the CPU instead.
NETS = '''
import torch
from torch import nn


class Dead(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.bias.numel(), device=x.device) + self.bias * 0
        logits[:, 0] = 1.0
        return logits


def build(config, input_shape, num_classes, *, dead=False, hidden=0):
    scale = float(torch.ones(1).sum())
    if dead:
        return Dead(num_classes)
    c, h, w = input_shape
    layers = [nn.Flatten()]
    if hidden:
        layers += [nn.Linear(c * h * w, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden or int(scale) * c * h * w, num_classes))
    return nn.Sequential(*layers)
'''

SPACE = """
model: {builder: "%s"}
params:
  dead: {type: bool}
  hidden: 0
  lr: 0.01
  epochs: 2
  batch_size: 64
"""

FAILING = '''
from torch import nn


def build(config, input_shape, num_classes, *, mode="ok"):
    if mode == "raise":
        raise ValueError("no block named 'zz'\\nsecond line")
    if mode == "tuple":
        return (nn.Linear(2, 2),)
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
'''


def _run(*args: str) -> int:
    return main(["run", "--dataset", "digits", "--no-progress", "--jobs", "1", *args])


def _trials(workdir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'cnnsearch.db'}").get_trials()


@pytest.fixture
def package(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package `mynets_study` with the builder, importable from sys.path like an installed one."""
    (workdir / "pkgs" / "mynets_study").mkdir(parents=True)
    (workdir / "pkgs" / "mynets_study" / "__init__.py").write_text("")
    (workdir / "pkgs" / "mynets_study" / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(workdir / "pkgs"))
    monkeypatch.delitem(__import__("sys").modules, "mynets_study", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "mynets_study.nets", raising=False)
    return "mynets_study.nets:build"


@pytest.mark.slow
def test_a_builder_in_a_package_trains_is_pruned_exports_and_retrains(
        workdir: Path, package: str, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "mine.yaml").write_text(SPACE % package)
    # Grid order with seed 0: the working network first, then the dead one, which the pruner stops.
    assert _run("--study", "mine", "--space", "mine.yaml", "--sampler", "grid", "--pruner", "sha",
                "--trials", "2", "--seed", "0") == 0
    good, dead = _trials(workdir, "mine")
    assert (good.state, good.params) == (TrialState.COMPLETE, {"dead": False})
    assert good.value > 0.5
    assert good.user_attrs["config"]["builder"] == package
    assert good.user_attrs["config"]["builder_args"] == {"dead": False, "hidden": 0}
    assert good.user_attrs["params"] == 64 * 10 + 10 and good.user_attrs["flops"] > 0
    assert good.user_attrs["latency_ms"] > 0
    assert (dead.state, dead.user_attrs["fail_reason"]) == (TrialState.PRUNED, "pruned")
    assert len(dead.intermediate_values) == 1

    capsys.readouterr()
    assert main(["export", "--study", "mine", "--out", "exported", "--no-weights"]) == 0
    recipe = yaml.safe_load((workdir / "exported" / "recipe.yaml").read_text())
    assert recipe["builder"]["builder"] == package
    assert len(recipe["builder"]["sha256"]) == 64
    assert main(["train", "--config", "exported/recipe.yaml", "--out", "retrained"]) == 0
    assert "(the trial's, exactly)" in capsys.readouterr().out
    assert (workdir / "retrained" / "weights.pt").is_file()
    # A machine whose copy of the builder differs does not retrain the recipe with it.
    (workdir / "pkgs" / "mynets_study" / "nets.py").write_text(NETS + "\n# edited\n")
    assert main(["train", "--config", "exported/recipe.yaml", "--out", "other"]) == 2
    assert "is not the file the study was made with" in capsys.readouterr().err
    assert not (workdir / "other").exists()


@pytest.mark.slow
def test_a_builder_that_raises_or_returns_no_module_fails_only_its_trial(workdir: Path) -> None:
    (workdir / "nets.py").write_text(FAILING)
    (workdir / "fail.yaml").write_text(textwrap.dedent("""
        model: {builder: nets.py:build}
        params:
          mode: {type: categorical, choices: [raise, tuple, ok]}
          epochs: 1
    """))
    # Two worker processes: each imports the builder from what the study recorded.
    assert _run("--study", "fail", "--space", "fail.yaml", "--sampler", "grid", "--pruner", "none",
                "--trials", "3", "--jobs", "2") == 0
    by_mode = {t.params["mode"]: t for t in _trials(workdir, "fail")}
    assert os.getpid() not in {t.user_attrs["pid"] for t in by_mode.values()}
    assert by_mode["ok"].state == TrialState.COMPLETE
    builder = f"{workdir / 'nets.py'}:build"
    raised, tupled = by_mode["raise"], by_mode["tuple"]
    assert (raised.state, raised.user_attrs["fail_reason"]) == (TrialState.FAIL, "error")
    assert raised.user_attrs["fail_message"] == f"ModelError: builder {builder} raised ValueError: no block named 'zz'"
    assert tupled.state == TrialState.FAIL
    assert tupled.user_attrs["fail_message"].startswith(f"ModelError: builder {builder} returned a tuple, not a "
                                                        "torch.nn.Module")


def test_a_worker_whose_builder_file_differs_refuses_to_join(workdir: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    from search.study.spec import StudySpec, create_or_resume
    from spaces import load_space
    from storage import open_storage

    (workdir / "nets.py").write_text(FAILING)
    (workdir / "s.yaml").write_text("model: {builder: nets.py:build}\nparams: {epochs: 1}\n")
    url = f"sqlite:///{workdir / 'cnnsearch.db'}"
    create_or_resume(open_storage(url), "s", StudySpec(space=load_space("s.yaml"), dataset="digits", budget=1))
    (workdir / "nets.py").write_text(FAILING + "\n# edited on this machine\n")
    capsys.readouterr()
    assert main(["worker", "--study", "s", "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"study 's': builder {workdir / 'nets.py'}:build: this machine's {workdir / 'nets.py'} is not the file " \
           "the study was made with" in err
    assert (_trials(workdir, "s")) == []
    # So is a `run` resuming it with the edited file.
    assert main(["run", "--study", "s", "--dataset", "digits", "--space", "s.yaml", "--trials", "1"]) == 2
    assert "builder: study has" in capsys.readouterr().err


def test_an_unknown_builder_key_is_refused_by_spaces_validate(workdir: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    (workdir / "nets.py").write_text(FAILING)
    (workdir / "s.yaml").write_text("model: {builder: nets.py:build}\nparams:\n  mdoe: {type: categorical, "
                                    "choices: [ok]}\n")
    assert main(["spaces", "validate", "s.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cnnsearch: error: s.yaml: params: unknown parameter 'mdoe' (did you mean 'mode'?); builder "
                   f"{workdir / 'nets.py'}:build declares: mode; the other parameters are cnnsearch's config keys "
                   "(spaces/schema.py)")
