"""The train/val/test split, and the tensors one trial trains from, already on its device.

The split is made once per study, deterministically (seeded, stratified), and recorded in
the study by :meth:`Split.describe`; search trials only ever see ``val``, the final
evaluation alone touches ``test``. A worker copies the uint8 images to its device once
(:func:`prepare_data`); batches are then index slices (:func:`batches`) and no
DataLoader or per-sample Python runs in the training loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from search.trial.datasets import ImageSet
from search.trial.errors import DataError

STAGES = ("search", "final")


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint, sorted int64 index arrays into an :class:`ImageSet` that together cover it."""

    seed: int
    val_fraction: float
    test_fraction: float
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    given: tuple[str, ...] = ()
    """The parts the data came split into (``train``/``val``/``test`` folders); empty when all were drawn here."""

    def fingerprint(self) -> str:
        """16 hex digits identifying the three index arrays (equal iff the split is the same)."""
        digest = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            # The length keeps (train=[0, 1], val=[2]) apart from (train=[0], val=[1, 2]).
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(np.ascontiguousarray(part, dtype="<i8").tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded in the study: seed, fractions, sizes and fingerprint."""
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "fingerprint": self.fingerprint(),
            **({"given": list(self.given)} if self.given else {}),
        }


def make_split(
    labels: torch.Tensor, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
    parts: dict[str, int] | None = None,
) -> Split:
    """Split ``len(labels)`` samples into train/val/test, stratified by label.

    ``parts`` (:attr:`ImageSet.parts`, data that comes split) gives the parts instead: the
    first ``parts["train"]`` samples are train, the next ``parts["val"]`` val, the rest test;
    without a ``test`` part, test is drawn from train (``test_fraction`` of it, stratified).

    Deterministic in ``seed`` (the same indices in any process). Every class present in
    ``labels`` appears in each of the three parts; when there are too few samples for
    that, :class:`DataError` says so with the class counts. Fractions must each lie in
    (0, 1) and sum to less than 1.
    """
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DataError(f"{key}={value!r} is not accepted; give a number strictly between 0 and 1")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction={val_fraction} + test_fraction={test_fraction} leaves no training "
                        f"data; their sum must be below 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"split seed={seed!r} is not accepted; give an integer >= 0")

    from sklearn.model_selection import train_test_split

    y = torch.as_tensor(labels).cpu().numpy().astype(np.int64)
    counts = _class_counts(y)
    if parts is not None:
        return _check_parts(_given_split(y, parts, seed, val_fraction, test_fraction), y, counts)
    everything = np.arange(len(y), dtype=np.int64)
    # Two stratified cuts: the held-out part, then held-out -> val + test. Each cut keeps
    # every class within one sample of its proportion.
    try:
        train, held = train_test_split(everything, test_size=val_fraction + test_fraction,
                                       random_state=seed, stratify=y)
        val, test = train_test_split(held, test_size=test_fraction / (val_fraction + test_fraction),
                                     random_state=seed, stratify=y[held])
    except ValueError as exc:
        raise DataError(f"cannot split {len(y)} images into val_fraction={val_fraction}, "
                        f"test_fraction={test_fraction} with every class in each part "
                        f"(images per class: {counts}): {exc}; use larger fractions or more images") from exc
    split = Split(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                  train=np.sort(train), val=np.sort(val), test=np.sort(test))
    return _check_parts(split, y, counts)


def _given_split(y: np.ndarray, parts: dict[str, int], seed: int, val_fraction: float,
                 test_fraction: float) -> Split:
    from sklearn.model_selection import train_test_split

    ends = np.cumsum([parts["train"], parts["val"]])
    train, val = np.arange(ends[0]), np.arange(ends[0], ends[1])
    if "test" in parts:
        test = np.arange(ends[1], len(y))
    else:
        try:
            train, test = train_test_split(train, test_size=test_fraction, random_state=seed, stratify=y[train])
        except ValueError as exc:
            raise DataError(f"cannot draw test_fraction={test_fraction} of the {len(train)} train images as the "
                            f"test part with every class in it: {exc}; add a test/ folder or more images") from exc
    return Split(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, train=np.sort(train),
                 val=val, test=np.sort(test), given=tuple(parts))


def _check_parts(split: Split, y: np.ndarray, counts: str) -> Split:
    """``split``, once every class is known to have images in each of its parts."""
    classes = set(np.unique(y).tolist())
    for part_name in ("train", "val", "test"):
        part = getattr(split, part_name)
        missing = sorted(classes - set(np.unique(y[part]).tolist()))
        if missing and part_name in split.given:
            raise DataError(f"the {part_name}/ folder ({len(part)} images) has no images of classes {missing}; "
                            f"give every class images in {part_name}/")
        if missing:
            raise DataError(f"the {part_name} part of the split ({len(part)} images) has no images of "
                            f"classes {missing} (images per class: {counts}); "
                            f"use larger fractions or more images")
    return split


def _class_counts(y: np.ndarray) -> str:
    values, counts = np.unique(y, return_counts=True)
    return ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist(), strict=True))


@dataclass
class TrialData:
    """What the training loop consumes; every tensor is already on the trial's device.

    In the ``search`` stage ``train_*`` is the split's train part and ``val_*`` its val
    part; in the ``final`` stage ``train_*`` is train + val and ``val_*`` is the test part.
    ``mean`` and ``std`` are per-channel statistics of ``train_x / 255``, shape (1, C, 1, 1).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    input_shape: tuple[int, int, int]
    num_classes: int

    def normalize(self, x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(x / 255 - mean) / std`` in ``dtype``.

        Takes uint8 images, or float images already scaled to [0, 1] (the output of
        :class:`search.trial.augment.Augmenter`), which are not divided again.
        """
        x = x_uint8.to(dtype)
        if x_uint8.dtype == torch.uint8:
            x = x / 255
        return (x - self.mean.to(dtype)) / self.std.to(dtype)


def prepare_data(
    images: ImageSet, split: Split, device: torch.device | str, stage: str = "search"
) -> TrialData:
    """Copy the parts of ``images`` that ``stage`` needs to ``device``, once.

    ``stage="search"`` trains on ``split.train`` and validates on ``split.val``;
    ``stage="final"`` trains on train + val and evaluates on ``split.test``. Raises
    :class:`DataError` when ``split`` was not made for ``images``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not accepted; give one of {', '.join(STAGES)}")
    total = len(split.train) + len(split.val) + len(split.test)
    if total != len(images.labels):
        raise DataError(f"the split (fingerprint {split.fingerprint()}) covers {total} images but dataset "
                        f"{images.name!r} has {len(images.labels)}; make the split from this dataset")
    device = torch.device(device)
    if stage == "search":
        fit, held = split.train, split.val
    else:
        fit, held = np.sort(np.concatenate([split.train, split.val])), split.test
    index = torch.from_numpy(np.concatenate([fit, held]))
    # One gathered host tensor per dtype, so one host->device copy each; the parts are views.
    x = images.images[index]
    y = images.labels[index]
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    n_fit = len(fit)
    train_x = x[:n_fit]
    mean, std = _channel_stats(train_x)
    return TrialData(
        train_x=train_x, train_y=y[:n_fit], val_x=x[n_fit:], val_y=y[n_fit:],
        mean=mean, std=std, classes=list(images.classes),
        input_shape=tuple(images.images.shape[1:]), num_classes=len(images.classes),
    )


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``x / 255`` as float32 (1, C, 1, 1) tensors on ``x``'s device.

    Computed exactly from a 256-bin histogram per channel, so the result does not depend
    on the device or on summation order.
    """
    channels = x.shape[1]
    counts = torch.stack([
        torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(channels)
    ]).double()
    values = torch.arange(256, dtype=torch.float64, device=x.device) / 255
    n = counts.sum(dim=1).clamp_min(1)
    mean = (counts * values).sum(dim=1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(dim=1) / n
    # A constant channel (e.g. blank borders only) would divide by zero.
    std = var.sqrt().clamp_min(1e-3)
    return mean.float().view(1, channels, 1, 1), std.float().view(1, channels, 1, 1)


def batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device | str, shuffle: bool = True
) -> Iterator[torch.Tensor]:
    """Index tensors on ``device`` covering ``range(n)`` once: one epoch of batches.

    Shuffled with ``generator`` (drawn on the generator's own device, so a CPU generator
    gives the same order for any ``device``); nothing is dropped, the last batch may be
    smaller.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not accepted; give an integer >= 1")
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    else:
        order = torch.arange(n, device=device)
    yield from order.split(batch_size)
