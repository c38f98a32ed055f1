"""HOG features on the device: the same numbers as scikit-image's ``skimage.feature.hog``, batched.

Real images: sklearn's 8x8 digits (grayscale, values 0-16) and crops of its sample photographs
(colour; and their grayscale mean). Colour is compared with ``channel_axis=-1``: per pixel, the
gradient of the channel where it is largest, as scikit-image does.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from skimage.feature import hog as skimage_hog
from sklearn.datasets import load_digits, load_sample_images

from search import build_model, load_recipe
from search.cli import main
from search.trial.hog import Hog
from spaces import SpaceError, load_space
from spaces.schema import TrialConfig
from storage import open_storage

# Our names -> scikit-image's block_norm names.
NORMS = {"l1": "L1", "l1_sqrt": "L1-sqrt", "l2": "L2", "l2_hys": "L2-Hys"}


def ours(images: np.ndarray, cell: int, orientations: int, block: int, norm: str) -> np.ndarray:
    """HOG of a batch of (N, H, W) grayscale or (N, H, W, C) colour images through :class:`Hog`."""
    x = torch.from_numpy(images).float()
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    hog = Hog(tuple(x.shape[1:]), cell, orientations, block, norm)
    out = hog(x).numpy()
    assert out.shape == (len(images), hog.size)
    return out


def reference(image: np.ndarray, cell: int, orientations: int, block: int, norm: str) -> np.ndarray:
    return skimage_hog(image.astype(np.float64), orientations=orientations, pixels_per_cell=(cell, cell),
                       cells_per_block=(block, block), block_norm=NORMS[norm],
                       channel_axis=-1 if image.ndim == 3 else None, feature_vector=True)


def sample_crops() -> np.ndarray:
    """Two 45x38 colour crops of the sample photographs (sizes that leave pixels past the last cell).

    Kept at their 0-255 values: differences of integers are exact in float32 and float64
    alike, so where two channels' gradients tie, both sides pick the same (the first). Scaled
    to [0, 1], rounding breaks such ties one way in float32 and the other in float64, and a
    pixel's gradient lands in another bin: a difference in the last bit, not in the method.
    """
    china, flower = load_sample_images().images
    return np.stack([china[100:145, 200:238], flower[150:195, 300:338]]).astype(np.float64)


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("cell,orientations,block", [(2, 9, 2), (4, 8, 2), (3, 6, 1), (2, 12, 3)])
def test_digits_match_scikit_image(cell: int, orientations: int, block: int, norm: str) -> None:
    images = load_digits().images[:20]
    got = ours(images, cell, orientations, block, norm)
    for image, features in zip(images, got, strict=True):
        np.testing.assert_allclose(features, reference(image, cell, orientations, block, norm), atol=1e-5)


@pytest.mark.parametrize("norm", ["l2_hys", "l1"])
@pytest.mark.parametrize("cell,orientations,block", [(8, 9, 2), (5, 8, 3)])
def test_colour_photographs_match_scikit_image(cell: int, orientations: int, block: int, norm: str) -> None:
    crops = sample_crops()
    got = ours(crops, cell, orientations, block, norm)
    for crop, features in zip(crops, got, strict=True):
        np.testing.assert_allclose(features, reference(crop, cell, orientations, block, norm), atol=1e-5)
    gray = np.round(crops.mean(axis=3))  # whole grey levels, for the reason in sample_crops
    got = ours(gray, cell, orientations, block, norm)
    for image, features in zip(gray, got, strict=True):
        np.testing.assert_allclose(features, reference(image, cell, orientations, block, norm), atol=1e-5)


def test_a_cell_or_block_larger_than_the_image_is_shrunk_with_a_note() -> None:
    hog = Hog((1, 8, 8), cell=16, orientations=9, block=3, norm="l2_hys")
    assert (hog.cell, hog.block, hog.size) == (8, 1, 9)
    assert hog.notes == ["hog_cell 16 shrunk to 8: the 8x8 input holds no larger cell",
                         "hog_block 3 shrunk to 1: 8x8 pixels hold 1x1 cells of 8x8"]
    image = load_digits().images[0]
    np.testing.assert_allclose(ours(image[None], 8, 9, 1, "l2_hys")[0], reference(image, 8, 9, 1, "l2_hys"),
                               atol=1e-5)


def test_a_gradient_just_below_the_horizontal_is_binned_not_lost() -> None:
    """An angle of -6e-6 degrees is 180 - 6e-6, which float32 rounds to 180: the top of no bin.
    It belongs to the bin of 0 (orientation is taken modulo 180)."""
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 0, 1], image[0, 0, 1, 2] = 1e-7, 1.0  # the centre's gradient: -1e-7 down the rows, 1 across
    features = Hog((1, 3, 3), cell=3, orientations=9, block=1, norm="l1")(image)[0]
    assert features[0].item() == pytest.approx(1.0, abs=1e-4) and features[1:].sum().item() == 0.0

@pytest.mark.parametrize("partial,message", [
    ({"hog_cell": 0}, "config: hog_cell=0 is not accepted; hog_cell takes an integer in [1, 64]"),
    ({"hog_orientations": 1}, "config: hog_orientations=1 is not accepted; hog_orientations takes an integer in "
                              "[2, 36]"),
    ({"hog_block": 9}, "config: hog_block=9 is not accepted; hog_block takes an integer in [1, 8]"),
    ({"hog_norm": "L2-Hys"}, "config: hog_norm='L2-Hys' is not accepted; hog_norm takes one of 'l1', 'l1_sqrt', "
                             "'l2', 'l2_hys'"),
    ({"hog": "yes"}, "config: hog='yes' is not accepted; hog takes true or false"),
])
def test_bad_hog_values_are_refused_in_one_line(partial: dict, message: str) -> None:
    with pytest.raises(SpaceError) as caught:
        TrialConfig.from_dict(partial)
    assert str(caught.value) == message


def test_hog_is_off_by_default() -> None:
    config = TrialConfig()
    assert (config.hog, config.hog_cell, config.hog_orientations, config.hog_block, config.hog_norm) == (
        False, 4, 9, 2, "l2_hys")


def test_the_default_space_searches_hog_and_starts_from_networks_without_it() -> None:
    space = load_space("default")
    assert space.params["hog"].type == "bool"
    assert space.params["hog_cell"].when == {"hog": (True,)}
    assert [point["hog"] for point in space.start] == [False, False]


HOG_SPACE = """\
description: one-stage CNNs on digits, with and without HOG features
params:
  hog: {type: bool}
  hog_cell: {type: categorical, choices: [2, 4], when: {hog: true}}
  depth: 1
  width: 8
  epochs: 2
start:
  - {hog: true, hog_cell: 2}
  - {hog: false}
"""


@pytest.mark.slow
def test_a_cnn_with_hog_trains_is_ablated_exports_and_retrains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    monkeypatch.setattr("search.study.local.cpu_threads_per_worker", lambda jobs: 1)
    (tmp_path / "hog.yaml").write_text(HOG_SPACE)
    url = f"sqlite:///{tmp_path / 'hog.db'}"
    assert main(["run", "--study", "hog", "--storage", url, "--dataset", "digits", "--space", "hog.yaml",
                 "--trials", "4", "--seed", "1", "--keep-checkpoints", "--no-progress"]) == 0
    study = optuna.load_study(study_name="hog", storage=open_storage(url, heartbeat_interval=None))
    fused, plain = study.trials[0], study.trials[1]  # the two start points
    assert fused.state == plain.state == optuna.trial.TrialState.COMPLETE
    assert fused.user_attrs["config"]["hog"] is True and plain.user_attrs["config"]["hog"] is False
    assert fused.user_attrs["flops"] > plain.user_attrs["flops"]  # the gradient convs and the wider head

    # The report's ablation has a row for the toggle, as for batch_norm or residual.
    assert main(["report", "--study", "hog", "--storage", url, "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| hog | True |" in summary

    # Exported, the recipe rebuilds the fused model: the kept weights load into it.
    out = tmp_path / "recipe"
    assert main(["export", "--study", "hog", "--storage", url, "--out", str(out), "--trial", "0"]) == 0
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe["config"]["hog"] is True and recipe["config"]["hog_cell"] == 2
    model = build_model(recipe)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    assert model.hog is not None and model.hog.cell == 2

    # `cnnsearch train --config` retrains it to the trial's result, bit for bit.
    capsys.readouterr()
    with contextlib.chdir(tmp_path):
        assert main(["train", "--config", str(out / "recipe.yaml"), "--out", str(tmp_path / "run"),
                     "--device", "cpu"]) == 0
    assert "(the trial's, exactly)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_accuracy"] == fused.user_attrs["val_accuracy"]
    retrained = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    kept = torch.load(out / "weights.pt", weights_only=True)
    assert retrained.keys() == kept.keys() and all(torch.equal(retrained[k], kept[k]) for k in kept)
