"""`cnnsearch run` without --space: the auto space, derived from the data and the budget, said, recorded and kept.

The runs here give ``--timeout 1``: deriving (loading the data, timing a network) uses that
second, so the study is created and recorded and no trial trains unless a test asks a worker to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from search.cli import main
from search.study.auto_space import typical_epoch_seconds
from search.trial.data import make_split
from search.trial.datasets import load_dataset
from search.trial.models import as_built
from spaces import load_space, parse_space
from spaces.derive import Budget, DataFacts, derive_space

QUICK_SPACE = """
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  epochs: 1
  depth: 1
"""


def _crops(folder: Path, side: int, count: int) -> str:
    """A folder of coloured ``side``-px photographs, two classes: crops of scikit-learn's two sample images."""
    rng = np.random.default_rng(0)
    for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            top, left = rng.integers(0, image.shape[0] - side), rng.integers(0, image.shape[1] - side)
            Image.fromarray(image[top:top + side, left:left + side]).save(folder / name / f"{i}.png")
    return f"imagefolder:{folder}"


@pytest.fixture
def photos(workdir: Path) -> str:
    """A small folder of coloured 32-px photographs, two classes."""
    return _crops(workdir / "photos", 32, 40)


def _run(capsys: pytest.CaptureFixture, *args: str) -> list[str]:
    assert main(["run", "--no-progress", *args]) == 0
    return capsys.readouterr().out.splitlines()


def _study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'cnnsearch.db'}")


def _decisions(lines: list[str]) -> list[str]:
    """The indented decision lines right after ``space auto: ...`` (the best trial's lines come later)."""
    decisions = []
    for line in lines[1:]:
        if not line.startswith("  "):
            break
        decisions.append(line.strip())
    return decisions


def test_run_first_says_what_it_derived_and_why_and_photos_differ_from_digits(
        workdir: Path, photos: str, capsys: pytest.CaptureFixture) -> None:
    colour = _run(capsys, "--study", "c", "--dataset", photos, "--timeout", "1")
    digits = _run(capsys, "--study", "d", "--dataset", "mnist5k", "--timeout", "1")
    assert colour[0].startswith("space auto: derived from the data (32x32 px, 3 channels, 2 classes, ")
    assert digits[0].startswith("space auto: derived from the data (28x28 px, 1 channel, 10 classes, 4,000 ")
    assert "1 s left" in colour[0] or "0 s left" in colour[0]  # the budget, less what deriving took
    assert "6 drawn from the space a median" in digits[0]  # rule 6's pace: networks drawn as the first trials are
    assert [d.split(":")[0] for d in _decisions(colour)][:2] == ["stages 2-4", "first layer stride 1"]
    assert _decisions(digits)[0].startswith("stages 1-3: 28-px images hold 3 halvings")
    colour_aug = next(d for d in _decisions(colour) if "shifts" in d)
    digits_aug = next(d for d in _decisions(digits) if "shifts" in d)
    assert colour_aug.startswith("flips searched (start: on), shifts 0-4 px") and "photos" in colour_aug
    assert digits_aug.startswith("no flips, shifts 0-3 px") and "glyph-like" in digits_aug
    assert any(d.startswith("epochs ") and "Hyperband maximum" in d for d in _decisions(colour))
    spaces = {name: parse_space(_study(workdir, name).user_attrs["space"], name="auto") for name in "cd"}
    assert spaces["c"].params["aug_flip"].type == "bool" and spaces["d"].fixed["aug_flip"] is False


def test_the_typical_pace_is_timed_on_networks_drawn_from_the_space_on_the_real_data() -> None:
    images = load_dataset("digits")
    split = make_split(images.labels, seed=0)
    fixed = {"epochs": 3, "batch_size": 32, "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}
    light = parse_space({"params": {**fixed, "depth": 1, "width": 8, "kernel": 3}}, name="light")
    heavy = parse_space({"params": {**fixed, "depth": 2, "width": {"type": "int", "low": 96, "high": 128},
                                    "kernel": 5, "attention": "both"}}, name="heavy")
    cpu = torch.device("cpu")
    light_seconds, light_draws = typical_epoch_seconds(light, images, split, cpu, draws=3, seed=0)
    heavy_seconds, heavy_draws = typical_epoch_seconds(heavy, images, split, cpu, draws=3, seed=0)
    assert light_draws == heavy_draws == 3
    assert heavy_seconds > 3 * light_seconds > 0  # ~100x the multiply-adds a step


def test_the_derivation_is_recorded_shown_by_status_and_kept_on_resume(
        workdir: Path, photos: str, capsys: pytest.CaptureFixture) -> None:
    first = _run(capsys, "--study", "s", "--dataset", photos, "--timeout", "1")
    attrs = _study(workdir, "s").user_attrs
    recorded = attrs["space_derivation"]
    assert attrs["space_name"] == "auto"
    assert recorded["data"]["channels"] == 3 and recorded["data"]["height"] == 32
    assert recorded["budget"]["trials"] is None and recorded["budget"]["epoch_seconds"] > 0
    assert attrs["trial_timeout"] == recorded["trial_timeout"] >= 120  # 4x a typical network at the top, >= 2 min
    assert [f"{what}: {why}" for what, why in recorded["decisions"]] == _decisions(first)

    assert main(["status", "--study", "s"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0].startswith("study s (") and "space auto" in status[0]
    assert [line.strip() for line in status[1:1 + len(recorded["decisions"])]] == _decisions(first)

    # A new timing could derive another space, which the study would refuse: the recorded one is reused.
    again = _run(capsys, "--study", "s", "--dataset", photos, "--timeout", "1")
    assert again[0] == "space auto: as derived when study 's' was created"
    assert _decisions(again) == _decisions(first)
    assert _study(workdir, "s").user_attrs["space_fingerprint"] == attrs["space_fingerprint"]


@pytest.mark.slow
def test_a_worker_joining_trains_in_the_recorded_auto_space(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    _run(capsys, "--study", "j", "--dataset", "digits", "--timeout", "1")
    recorded = parse_space(_study(workdir, "j").user_attrs["space"], name="auto")
    assert main(["worker", "--study", "j", "--trials", "1", "--device", "cpu"]) == 0
    # `run` may have trained the start point already (its --timeout lets a started trial finish); the
    # start point is never pruned, a sampled trial after it may be (Hyperband).
    finished = [t for t in _study(workdir, "j").trials if t.state.is_finished()]
    assert finished and finished[0].state == optuna.trial.TrialState.COMPLETE
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in finished)
    assert finished[0].params == recorded.start[0]  # the derived space's start point
    for trial in finished:  # every trial a point of the recorded space
        assert recorded.config_from_params(trial.params)
    wanted = recorded.distributions()
    assert {k: wanted[k] for k in trial.distributions} == trial.distributions


@pytest.mark.parametrize("given", ["default", "quick.yaml"])
def test_a_given_space_is_searched_as_it_is(workdir: Path, capsys: pytest.CaptureFixture, given: str) -> None:
    (workdir / "quick.yaml").write_text(QUICK_SPACE)
    lines = _run(capsys, "--study", "g", "--dataset", "digits", "--space", given, "--timeout", "1")
    assert not any("auto" in line for line in lines)
    attrs = _study(workdir, "g").user_attrs
    assert attrs["space_fingerprint"] == load_space(given).fingerprint()
    assert attrs["space_name"] == Path(given).stem and attrs.get("space_derivation") is None


def test_spaces_lists_the_derived_default_and_shows_its_rules(capsys: pytest.CaptureFixture) -> None:
    assert main(["spaces"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("auto ") and "derived from the data and the budget" in first
    assert main(["spaces", "show", "auto"]) == 0
    rules = capsys.readouterr().out
    assert "Stages" in rules and "Epochs" in rules and "Start point" in rules


def test_no_start_leaves_out_the_derived_start_points(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    lines = _run(capsys, "--study", "n", "--dataset", "digits", "--timeout", "1", "--no-start")
    assert lines[0].startswith("space auto: derived from the data (8x8 px")
    assert "--no-start: the space's 1 start point(s) are not tried" in lines
    study = _study(workdir, "n")
    assert not [t for t in study.trials if t.user_attrs.get("origin") == "start"]
    # The first drawn trial still trains the low end of the derived epoch range (the rest drawn).
    low = parse_space(study.user_attrs["space"], name="auto").params["epochs"].low
    assert f"first drawn trial: {low} epochs" in " ".join(_decisions(lines))
    assert [t.system_attrs["fixed_params"] for t in study.trials if t.user_attrs.get("origin") == "low_cost"] == [
        {"epochs": low}]


@pytest.mark.parametrize("side,stride", [(32, 1), (100, 2), (224, 4)])
def test_the_derived_networks_are_built_at_the_derived_stride_and_depths(side: int, stride: int) -> None:
    facts = DataFacts(channels=3, height=side, width=side, classes=10, train_images=4000, blank_fraction=0.05)
    space = derive_space(facts, Budget(240.0, None, 1, 1.5, "cpu")).space
    shape = (3, side, side)
    start = space.config_from_params(space.start[0])
    assert start.stem_stride == stride and as_built(start, shape) == start  # built as derived: nothing clamped
    for depth in space.params["depth"].options():
        config = space.config_from_params({**space.start[0], "depth": depth})
        assert as_built(config, shape) == config


@pytest.mark.slow
def test_run_on_larger_photos_says_it_strides_the_first_layer_and_why(workdir: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    lines = _run(capsys, "--study", "big", "--dataset", _crops(workdir / "big", 96, 12), "--timeout", "1")
    decisions = _decisions(lines)
    assert decisions[0].startswith("stages 2-4: 96-px images (48 px after the first layer) hold 4 halvings")
    assert decisions[1] == ("first layer stride 2: 96-px images (65-128 px): a stride-2 first layer trains on a "
                            "48-px map instead of the full image")
    recorded = parse_space(_study(workdir, "big").user_attrs["space"], name="auto")
    assert recorded.fixed["stem_stride"] == 2
