"""Batched augmentation: shapes, ranges, what each transform visibly does, reproducibility."""

from __future__ import annotations

import pytest
import torch

from search.trial.augment import Augmenter
from spaces.errors import SpaceError
from spaces.schema import TrialConfig

SHAPE = (3, 12, 10)
ALL_ON = {"aug_flip": True, "aug_translate": 2, "aug_rotate": 15.0, "aug_jitter": 0.3, "aug_noise": 0.05}


def batch(n: int = 32, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def augmenter(config: dict, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> Augmenter:
    return Augmenter(TrialConfig.from_dict(config), shape, torch.Generator().manual_seed(seed))


def test_all_off_is_inactive_and_identity():
    aug = augmenter({"aug_flip": False, "aug_translate": 0, "aug_rotate": 0.0})
    assert not aug.active
    x = batch()
    assert torch.equal(aug(x), x)
    assert not augmenter({}).active


@pytest.mark.parametrize(
    "config",
    [
        {"aug_flip": True},
        {"aug_translate": 3},
        {"aug_rotate": 20.0},
        {"aug_jitter": 0.5},
        {"aug_noise": 0.1},
        ALL_ON,
    ],
)
def test_each_augmentation_keeps_shape_dtype_and_range_and_changes_the_batch(config):
    aug = augmenter(config)
    assert aug.active
    x = batch()
    out = aug(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_flip_mirrors_about_half_the_images_and_leaves_the_rest():
    x = batch(200)
    out = augmenter({"aug_flip": True})(x)
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    unchanged = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert 60 < sum(flipped) < 140


def test_translation_moves_whole_images_by_whole_pixels_with_zero_fill():
    # One bright pixel in the middle of each image: after a shift it is still one pixel,
    # at most 2 pixels away, and nothing else lights up.
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1
    out = augmenter({"aug_translate": 2}, shape=(1, 9, 9))(x)
    for image in out[:, 0]:
        assert image.sum() == 1 and image.max() == 1
        row, col = divmod(int(image.argmax()), 9)
        assert abs(row - 4) <= 2 and abs(col - 4) <= 2
    positions = {int(image.argmax()) for image in out[:, 0]}
    assert len(positions) > 10


def test_translation_fills_with_zeros_at_the_edges():
    out = augmenter({"aug_translate": 3}, shape=(1, 8, 8))(torch.ones(64, 1, 8, 8))
    assert (out == 0).any() and (out == 1).any()
    assert set(out.unique().tolist()) == {0.0, 1.0}


def bar_angles(images: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of the bar in each N x H x W image, from its second moments about the centre."""
    height, width = images.shape[1:]
    rows = torch.arange(height, dtype=torch.float64)[:, None] - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64)[None, :] - (width - 1) / 2
    w = images.double()
    var_r, var_c, cov = (w * rows**2).sum((1, 2)), (w * cols**2).sum((1, 2)), (w * rows * cols).sum((1, 2))
    # Rows grow downwards, so a counter-clockwise turn has negative covariance.
    return torch.rad2deg(0.5 * torch.atan2(-2 * cov, var_c - var_r))


@pytest.mark.parametrize(("height", "width"), [(21, 21), (11, 41)])
def test_rotation_turns_a_bar_by_up_to_the_configured_angle_about_the_centre(height, width):
    # On the wide image a rotation done in [-1, 1] coordinates without the aspect
    # correction would flatten every angle to under 13 degrees.
    x = torch.zeros(64, 1, height, width)
    x[:, 0, height // 2, width // 2 - 4 : width // 2 + 5] = 1  # a horizontal bar through the centre
    out = augmenter({"aug_rotate": 40.0}, shape=(1, height, width))(x)
    assert (out[:, 0, height // 2, width // 2] > 0.9).all()
    angles = bar_angles(out[:, 0])
    assert angles.abs().max() <= 41
    assert angles.min() < -25 and angles.max() > 25


def test_jitter_changes_brightness_per_image():
    x = torch.full((64, 1, 4, 4), 0.5)
    out = augmenter({"aug_jitter": 0.4}, shape=(1, 4, 4))(x)
    means = out.mean(dim=(1, 2, 3))
    assert means.min() < 0.4 and means.max() > 0.6
    assert (means - 0.5).abs().max() <= 0.4 + 1e-6


def test_noise_has_the_configured_sigma():
    x = torch.full((64, 3, 16, 16), 0.5)
    out = augmenter({"aug_noise": 0.05}, shape=(3, 16, 16))(x)
    assert abs((out - x).std().item() - 0.05) < 0.005


def test_same_generator_seed_same_augmentation_other_seed_other():
    x = batch()
    first = augmenter(ALL_ON, seed=5)(x)
    assert torch.equal(first, augmenter(ALL_ON, seed=5)(x))
    assert not torch.equal(first, augmenter(ALL_ON, seed=6)(x))
    # Successive calls draw fresh parameters.
    aug = augmenter(ALL_ON, seed=5)
    assert not torch.equal(aug(x), aug(x))


def test_translation_only_is_reproducible_too():
    x = batch()
    assert torch.equal(augmenter({"aug_translate": 2}, seed=1)(x), augmenter({"aug_translate": 2}, seed=1)(x))


def test_bad_config_value_is_refused_with_the_key():
    with pytest.raises(SpaceError, match="aug_rotate"):
        augmenter({"aug_rotate": -5.0})


def test_batch_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(3, 12, 10\)"):
        augmenter({"aug_flip": True})(torch.rand(4, 1, 12, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_gpu_with_a_gpu_generator():
    x = batch().cuda()
    aug = Augmenter(TrialConfig.from_dict(ALL_ON), SHAPE, torch.Generator(device="cuda").manual_seed(0))
    out = aug(x)
    assert out.device.type == "cuda" and out.shape == x.shape
    again = Augmenter(TrialConfig.from_dict(ALL_ON), SHAPE, torch.Generator(device="cuda").manual_seed(0))(x)
    assert torch.equal(out, again)
