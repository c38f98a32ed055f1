"""The train/val/test split, and the images one trial trains from, fed to its device.

The split is made once per study, deterministically (seeded, stratified), and recorded in
the study by :meth:`Split.describe`; search trials only ever see ``val``, the final
evaluation alone touches ``test``. With ``--cv K`` the split also holds K stratified folds of
train + val (:attr:`Split.folds`): a trial then trains once per fold (:meth:`TrialData.fold`),
and ``test`` is still untouched. When the parts a trial uses fit the data-memory budget
(:func:`data_memory_budget`), a worker copies the uint8 images to its device once
(:func:`prepare_data`) and batches are index slices (:func:`batches`); when they do not,
they stay in the host's (memory-mapped) set and :class:`StreamedImages` gathers each batch
in a background thread into pinned buffers copied to the device asynchronously. The same
seed draws the same batches either way; no DataLoader or per-sample Python runs in the
training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from search.trial.datasets import ImageSet
from search.trial.errors import DataError
from search.trial.memory import data_memory_setting, format_bytes

DATA_MEMORY_FRACTION = 0.5
"""Without ``$CNNSEARCH_DATA_MEMORY_MB``: this fraction of the device's free memory (host memory on CPU)."""

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
            **({"given": list(self.given)} if self.given else {}),
        }


def make_split(
    labels: torch.Tensor, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
    parts: dict[str, int] | None = None, cv: int | None = None,
) -> Split:
    """Split ``len(labels)`` samples into train/val/test, stratified by label.

    ``parts`` (:attr:`ImageSet.parts`, data that comes split) gives the parts instead: the
    first ``parts["train"]`` samples are train, the next ``parts["val"]`` val, the rest test;
    without a ``test`` part, test is drawn from train (``test_fraction`` of it, stratified).

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
    counts = _class_counts(y)
    if parts is not None:
        return _with_folds(_check_parts(_given_split(y, parts, seed, val_fraction, test_fraction), y, counts),
                           y, cv)
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
    return _with_folds(_check_parts(split, y, counts), y, cv)


def _with_folds(split: Split, y: np.ndarray, cv: int | None) -> Split:
    """``split`` with ``cv`` folds of its train + val (as it is without ``cv``)."""
    if cv is None:
        return split
    return replace(split, folds=_make_folds(y, np.sort(np.concatenate([split.train, split.val])), cv, split.seed))


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
    ``train_x`` and ``val_x`` are tensors on the device, or :class:`StreamedImages` (indexed
    the same way) when they did not fit the budget; ``feed`` says which and why.
    ``folds`` (``--cv K``, search stage only) holds each fold's val positions in ``train_x``
    followed by ``val_x``: :meth:`fold` gathers a fold's data from these.
    """

    train_x: torch.Tensor | StreamedImages
    train_y: torch.Tensor
    val_x: torch.Tensor | StreamedImages
    val_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    input_shape: tuple[int, int, int]
    num_classes: int
    feed: dict[str, Any] = field(default_factory=lambda: {"mode": "device"})
    folds: tuple[torch.Tensor, ...] = ()

    def train_batches(self, batch_size: int, generator: torch.Generator | None, *, order: torch.Tensor | None = None,
                      start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled ``(uint8 images, labels)`` batches on the device (see :func:`batches`).

        The order is drawn from ``generator`` before the first batch, so either feed gives the
        same batches and leaves ``generator`` in the same state. A resumed epoch passes the
        ``order`` it drew before (:func:`shuffled`) instead, and skips its first ``start`` batches.
        """
        if order is None:
            order = shuffled(len(self.train_y), generator)
        order = order.to(self.train_y.device).split(batch_size)[start:]
        if isinstance(self.train_x, StreamedImages):
            order = list(order)
            yield from zip(self.train_x.stream(order), (self.train_y[idx] for idx in order), strict=True)
            return
        for idx in order:
            yield self.train_x[idx], self.train_y[idx]

    def fold(self, i: int) -> TrialData:
        """Fold ``i`` of ``--cv K``: trains on train + val but the fold, validates on the fold.

        Its ``mean``/``std`` are its own train part's, as a single split's are. On the device
        the copy lives while the fold trains, so a worker holds train + val once plus one fold
        at a time; streamed data stays streamed (only the row lists are new).
        """
        n = len(self.train_y)
        held = torch.zeros(n + len(self.val_y), dtype=torch.bool, device=self.train_y.device)
        held[self.folds[i]] = True

        def take(train: torch.Tensor, val: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.cat([train[mask[:n]], val[mask[n:]]])

        train_y, val_y = take(self.train_y, self.val_y, ~held), take(self.train_y, self.val_y, held)
        if isinstance(self.train_x, StreamedImages) and isinstance(self.val_x, StreamedImages):
            rows, mask = torch.cat([self.train_x.rows, self.val_x.rows]), held.cpu()
            source, device = self.train_x.source, self.train_x.device
            train_x = StreamedImages(source, rows[~mask].numpy(), device)
            val_x = StreamedImages(source, rows[mask].numpy(), device)
            mean, std = (t.to(device) for t in _channel_stats_in_chunks(train_x))
        else:
            train_x, val_x = take(self.train_x, self.val_x, ~held), take(self.train_x, self.val_x, held)
            mean, std = _channel_stats(train_x)
        return TrialData(train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, mean=mean, std=std,
                         classes=self.classes, input_shape=self.input_shape, num_classes=self.num_classes,
                         feed=self.feed)

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
    images: ImageSet, split: Split, device: torch.device | str, stage: str = "search",
    data_memory: int | None = None,
) -> TrialData:
    """The parts of ``images`` that ``stage`` needs, on ``device`` when they fit ``data_memory`` bytes
    (default: :func:`data_memory_budget`), else streamed from ``images`` (:class:`StreamedImages`).

    ``stage="search"`` trains on ``split.train`` and validates on ``split.val`` (and carries
    the split's folds, if any); ``stage="final"`` trains on train + val and evaluates on ``split.test``. Raises
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
    y = images.labels[index].to(device)
    n_fit = len(fit)
    needed = len(index) * int(np.prod(images.images.shape[1:]))
    budget, where = (data_memory, "the data-memory budget") if data_memory is not None else data_memory_budget(device)
    folds: tuple[torch.Tensor, ...] = ()
    if stage == "search" and split.folds:
        position = np.empty(len(images.labels), dtype=np.int64)
        position[index.numpy()] = np.arange(len(index))
        folds = tuple(torch.from_numpy(position[f]).to(device) for f in split.folds)
    common = {"classes": list(images.classes), "input_shape": tuple(images.images.shape[1:]),
              "num_classes": len(images.classes), "train_y": y[:n_fit], "val_y": y[n_fit:], "folds": folds}
    if budget is not None and needed > budget:
        train_x = StreamedImages(images.images, fit, device)
        mean, std = _channel_stats_in_chunks(train_x)
        feed = {"mode": "stream", "reason": f"{len(index)} images need {format_bytes(needed)}, over "
                                           f"{format_bytes(budget)} ({where})"}
        return TrialData(train_x=train_x, val_x=StreamedImages(images.images, held, device), mean=mean.to(device),
                         std=std.to(device), feed=feed, **common)
    # One gathered host tensor, so one host->device copy; the parts are views.
    x = images.images[index]
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    mean, std = _channel_stats(x[:n_fit])
    feed = {"mode": "device", "reason": f"{len(index)} images need {format_bytes(needed)}"
                                       + (f", within {format_bytes(budget)} ({where})" if budget is not None else "")}
    return TrialData(train_x=x[:n_fit], val_x=x[n_fit:], mean=mean, std=std, feed=feed, **common)


def data_memory_budget(device: torch.device, environ: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Bytes the images of a trial may take on ``device``, and where that figure comes from.

    ``$CNNSEARCH_DATA_MEMORY_MB`` when set; else half the free memory of a GPU, or of the host
    on the CPU (the in-memory feed gathers a copy there); None where that cannot be told.
    Raises :class:`CnnSearchError` for a value that is not a positive number.
    """
    from search.trial.device import available_memory

    given = data_memory_setting(environ)
    if given is not None:
        return given, f"--data-memory {given / 1e6:g} MB"
    free = available_memory(device)
    if free is None:
        return None, "unknown"
    return int(free * DATA_MEMORY_FRACTION), f"{DATA_MEMORY_FRACTION:.0%} of the free memory of {device}"


class StreamedImages:
    """uint8 images that stay in the host's set (a memory map of the cache) and reach the device a batch at a time.

    ``rows`` picks this part's images from ``source`` (N x C x H x W, on the CPU). Indexing (an
    int tensor or a slice of the part) gathers those rows and copies them to ``device``;
    :meth:`stream` does so for a whole epoch in a background thread, double-buffered.
    """

    def __init__(self, source: torch.Tensor, rows: np.ndarray, device: torch.device) -> None:
        self.source = source
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.device = device
        self.shape = torch.Size((len(self.rows), *source.shape[1:]))
        self.dtype = source.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        picked = self.rows[key] if isinstance(key, slice) else self.rows[key.cpu()]
        return _gather_rows(self.source, picked).to(self.device)

    def stream(self, order: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The batches of ``order`` (index tensors into this part) on the device, gathered ahead in a thread.

        Two pinned buffers on a GPU: while the model trains on one batch, the next is gathered
        and copied on a side stream; the training stream waits on that copy's event only.
        """
        ready: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        # The whole epoch's indices to the host at once: one sync now, where a .cpu() per batch in the
        # thread would wait for the training kernels queued before it and serialise the two.
        host_order = torch.cat(list(order)).cpu().split([len(idx) for idx in order]) if len(order) else []
        thread = threading.Thread(target=self._produce, args=(host_order, ready, stop), name="cnnsearch-stream",
                                  daemon=True)
        thread.start()
        try:
            for _ in order:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                batch, copied = item
                if copied is not None:
                    torch.cuda.current_stream(self.device).wait_event(copied)
                    batch.record_stream(torch.cuda.current_stream(self.device))
                yield batch
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting to hand over a batch nobody takes
                with contextlib.suppress(queue.Empty):
                    ready.get_nowait()
                thread.join(timeout=0.05)

    def _produce(self, order: Sequence[torch.Tensor], ready: queue.Queue, stop: threading.Event) -> None:
        """Gather each batch of ``order`` (CPU index tensors) and hand it to :meth:`stream` through ``ready``."""
        cuda = self.device.type == "cuda"
        try:
            size = max((len(idx) for idx in order), default=0)
            buffers = ([torch.empty((size, *self.shape[1:]), dtype=self.dtype, pin_memory=True) for _ in range(2)]
                       if cuda else [])
            copies: list = [None, None]
            side = torch.cuda.Stream(self.device) if cuda else None
            for i, idx in enumerate(order):
                picked = self.rows[idx]
                if not cuda:
                    item = (_gather_rows(self.source, picked), None)
                else:
                    if copies[i % 2] is not None:
                        copies[i % 2].synchronize()  # the buffer's last copy to the device is done
                    buffer = buffers[i % 2][:len(picked)]
                    _gather_rows(self.source, picked, out=buffer)
                    with torch.cuda.stream(side):
                        batch = buffer.to(self.device, non_blocking=True)
                        copies[i % 2] = torch.cuda.Event()
                        copies[i % 2].record(side)
                    item = (batch, copies[i % 2])
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
            ready.put(exc)


def _gather_rows(source: torch.Tensor, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``source[rows]`` for a CPU tensor (a memory map of the cache), into ``out`` when given (a pinned buffer).

    numpy's ``take`` copies each row whole: on a 64 MB chunk of 128-px rows (the streamed channel
    statistics) it took 99 ms where ``torch.index_select`` took 1.3 s (a loaded 2-core host); a
    batch of 128 takes about 1 ms either way.
    """
    if out is None:
        out = torch.empty((len(rows), *source.shape[1:]), dtype=source.dtype)
    np.take(source.numpy(), rows.numpy(), axis=0, out=out.numpy())
    return out


def _channel_stats_in_chunks(images: StreamedImages) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_channel_stats` of streamed images, from histograms summed a chunk at a time on the CPU."""
    channels = images.shape[1]
    counts = torch.zeros((channels, 256), dtype=torch.float64)
    chunk = max(1, (64 * 2**20) // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), chunk):
        x = _gather_rows(images.source, images.rows[start:start + chunk])
        counts += torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(channels)]).double()
    return _stats_from_counts(counts)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``x / 255`` as float32 (1, C, 1, 1) tensors on ``x``'s device.

    Computed exactly from a 256-bin histogram per channel, so the result does not depend
    on the device or on summation order.
    """
    channels = x.shape[1]
    counts = torch.stack([
        torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(channels)
    ]).double()
    return _stats_from_counts(counts)


def _stats_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``value / 255`` from per-channel histograms (C x 256), as float32 (1, C, 1, 1)."""
    channels = counts.shape[0]
    values = torch.arange(256, dtype=torch.float64, device=counts.device) / 255
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
        order = shuffled(n, generator).to(device)
    else:
        order = torch.arange(n, device=device)
    yield from order.split(batch_size)


def shuffled(n: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of ``range(n)`` drawn from ``generator``, on the generator's own device: one epoch's order."""
    return torch.randperm(n, generator=generator, device=generator.device)
