"""The train/val/test split, and the tensors one trial trains from, already on its device.

The split is made once per study, deterministically (seeded, stratified), and recorded in
the study by :meth:`Split.describe`; search trials only ever see ``val``, the final
evaluation alone touches ``test``. With ``--cv K`` the split also holds K stratified folds of
train + val (:attr:`Split.folds`): a trial then trains once per fold (:meth:`TrialData.fold`),
and ``test`` is still untouched. A worker copies the uint8 images to its device once
(:func:`prepare_data`); batches are then index slices (:func:`batches`) and no
DataLoader or per-sample Python runs in the training loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
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
    folds: tuple[np.ndarray, ...] = ()
    """With ``cv=K``: each fold's val indices (sorted); the K of them partition train + val."""

    def fingerprint(self) -> str:
        """16 hex digits identifying the three index arrays (equal iff the split is the same).

        The folds are not part of it: a recipe retrains on the same train + val with or without them.
        """
        return _fingerprint((self.train, self.val, self.test))

    def fold_fingerprint(self) -> str | None:
        """16 hex digits identifying the folds (equal iff they are the same), or None without folds."""
        return _fingerprint(self.folds) if self.folds else None

    def describe_folds(self) -> dict[str, Any] | None:
        """JSON-able summary of the folds recorded in a ``--cv`` study: K, seed, val sizes, fingerprint."""
        if not self.folds:
            return None
        return {"k": len(self.folds), "seed": self.seed, "sizes": [len(f) for f in self.folds],
                "fingerprint": self.fold_fingerprint()}

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded in the study: seed, fractions, sizes and fingerprint."""
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "fingerprint": self.fingerprint(),
        }


def make_split(
    labels: torch.Tensor, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
    cv: int | None = None,
) -> Split:
    """Split ``len(labels)`` samples into train/val/test, stratified by label.

    Deterministic in ``seed`` (the same indices in any process). Every class present in
    ``labels`` appears in each of the three parts; when there are too few samples for
    that, :class:`DataError` says so with the class counts. Fractions must each lie in
    (0, 1) and sum to less than 1. With ``cv=K`` train + val is also divided into K
    stratified folds (:func:`_make_folds`); train, val and test are the same as without.
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
    everything = np.arange(len(y), dtype=np.int64)
    counts = _class_counts(y)
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
    classes = set(np.unique(y).tolist())
    for part_name in ("train", "val", "test"):
        part = getattr(split, part_name)
        missing = sorted(classes - set(np.unique(y[part]).tolist()))
        if missing:
            raise DataError(f"the {part_name} part of the split ({len(part)} images) has no images of "
                            f"classes {missing} (images per class: {counts}); "
                            f"use larger fractions or more images")
    if cv is None:
        return split
    return replace(split, folds=_make_folds(y, np.sort(np.concatenate([split.train, split.val])), cv, seed))


def _make_folds(y: np.ndarray, pooled: np.ndarray, cv: int, seed: int) -> tuple[np.ndarray, ...]:
    """``cv`` stratified, seeded folds of the indices ``pooled``: each fold's val indices, sorted."""
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise DataError(f"--cv {cv!r}: give at least 2 folds (or leave --cv out for one train/val split)")
    values, counts = np.unique(y[pooled], return_counts=True)
    if counts.min() < cv:
        # StratifiedKFold only warns then, and leaves that class out of some folds' val parts.
        raise DataError(f"--cv {cv} needs at least {cv} images of every class in train + val; class "
                        f"{values[counts.argmin()]} has {counts.min()} (images per class in train + val: "
                        f"{_class_counts(y[pooled])}); use fewer folds")
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed).split(pooled, y[pooled])
    return tuple(np.sort(pooled[val]) for _, val in folds)


def _fingerprint(parts: tuple[np.ndarray, ...]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        # The length keeps (train=[0, 1], val=[2]) apart from (train=[0], val=[1, 2]).
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(part, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def _class_counts(y: np.ndarray) -> str:
    values, counts = np.unique(y, return_counts=True)
    return ", ".join(f"{v}: {c}" for v, c in zip(values.tolist(), counts.tolist(), strict=True))


@dataclass
class TrialData:
    """What the training loop consumes; every tensor is already on the trial's device.

    In the ``search`` stage ``train_*`` is the split's train part and ``val_*`` its val
    part; in the ``final`` stage ``train_*`` is train + val and ``val_*`` is the test part.
    ``mean`` and ``std`` are per-channel statistics of ``train_x / 255``, shape (1, C, 1, 1).
    ``folds`` (``--cv K``, search stage only) holds each fold's val positions in ``train_x``
    followed by ``val_x``: :meth:`fold` gathers a fold's data from these tensors on the device.
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
    folds: tuple[torch.Tensor, ...] = ()

    def normalize(self, x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(x / 255 - mean) / std`` in ``dtype``.

        Takes uint8 images, or float images already scaled to [0, 1] (the output of
        :class:`search.trial.augment.Augmenter`), which are not divided again.
        """
        x = x_uint8.to(dtype)
        if x_uint8.dtype == torch.uint8:
            x = x / 255
        return (x - self.mean.to(dtype)) / self.std.to(dtype)

    def fold(self, i: int) -> TrialData:
        """Fold ``i`` of ``--cv K``: trains on train + val but the fold, validates on the fold.

        Its ``mean``/``std`` are its own train part's, as a single split's are. The copy lives
        while the fold trains, so a worker holds train + val once plus one fold at a time.
        """
        n = len(self.train_y)
        held = torch.zeros(n + len(self.val_y), dtype=torch.bool, device=self.train_y.device)
        held[self.folds[i]] = True

        def take(train: torch.Tensor, val: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.cat([train[mask[:n]], val[mask[n:]]])

        train_x = take(self.train_x, self.val_x, ~held)
        mean, std = _channel_stats(train_x)
        return TrialData(
            train_x=train_x, train_y=take(self.train_y, self.val_y, ~held),
            val_x=take(self.train_x, self.val_x, held), val_y=take(self.train_y, self.val_y, held),
            mean=mean, std=std, classes=self.classes, input_shape=self.input_shape, num_classes=self.num_classes,
        )


def prepare_data(
    images: ImageSet, split: Split, device: torch.device | str, stage: str = "search"
) -> TrialData:
    """Copy the parts of ``images`` that ``stage`` needs to ``device``, once.

    ``stage="search"`` trains on ``split.train`` and validates on ``split.val`` (and carries
    the split's folds, if any); ``stage="final"`` trains on train + val and evaluates on
    ``split.test``. Raises
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
    folds: tuple[torch.Tensor, ...] = ()
    if stage == "search" and split.folds:
        position = np.empty(len(images.labels), dtype=np.int64)
        position[index.numpy()] = np.arange(len(index))
        folds = tuple(torch.from_numpy(position[f]).to(device) for f in split.folds)
    return TrialData(
        train_x=train_x, train_y=y[:n_fit], val_x=x[n_fit:], val_y=y[n_fit:],
        mean=mean, std=std, classes=list(images.classes),
        input_shape=tuple(images.images.shape[1:]), num_classes=len(images.classes), folds=folds,
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
