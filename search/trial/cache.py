"""The decoded cache: image files decoded once per host into one uint8 file that every worker memory-maps.

A source (an image folder, a CSV of paths) at one image size is one cache entry: a folder in
the cache directory (:func:`cache_root`) holding

- ``header.json``: the source's fingerprint (file names, sizes and mtimes), classes, image
  size and shape, counts of skipped files, the names of the two data files, and the content's
  fingerprint (:func:`content_fingerprint`, hashed once here rather than by every worker);
- ``FINGERPRINT.images``: the images, uint8, N x C x H x W, raw (memory-mapped copy-on-write,
  so every process on the host shares the page cache and none holds its own copy);
- ``FINGERPRINT.labels.npy``: the int64 labels.

An entry is built under a lock on the entry folder (a second worker waits, then maps what the
first built), in parallel processes, into a staging folder that is renamed into place with the
header last (:func:`storage.staging.staged_files`): a reader only follows a header, so a build
killed anywhere leaves nothing that is used later; the next build removes its leftovers.
A source whose fingerprint differs from the header's is built again.

``import torch`` stays out of this module: the CLI's ``data list`` and ``data clear`` use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.trial.decode import GRAY_MODES, decode_rows, read_headers
from search.trial.errors import DataError
from search.trial.memory import format_bytes
from storage.staging import staged_files

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "CNNSEARCH_CACHE_DIR"
HEADER = "header.json"
FORMAT = 1
"""Bumped when the decoding changes what a cache holds, so older entries are built again."""
MIN_SIDE = 32
MAX_SIDE = 224
"""Without an image size, images are resized to their median side clamped to this range."""

_LOCK = ".lock"
_STAGING_PREFIX = ".cnnsearch-staging-"
_CHUNK = 256
"""Images per task of the decoding processes; fewer images than this are decoded in this process."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$CNNSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnsearch``
    (``~/.cache/cnnsearch`` when that is unset)."""
    if cache_dir:
        return Path(cache_dir).expanduser().absolute()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg).absolute() / "cnnsearch"


@dataclass(frozen=True)
class Source:
    """Image files to decode: ``samples`` are ``(file, label)`` with labels indexing ``classes``.

    ``parts``: for a source that comes split (``train/``, ``val/``, ``test/`` folders), how many
    samples each part has, the samples in that order; the header records how many of each decoded.
    """

    name: str
    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    parts: dict[str, int] | None = None

    def fingerprint(self, max_pixels: int) -> str:
        """16 hex digits from every file's name (relative to ``root``), label, size and mtime.

        Cheap (one ``stat`` per file, no reading): a changed, added or removed file gives another
        fingerprint. ``max_pixels`` decides which files are skipped, so it counts too.
        """
        digest = hashlib.sha256(json.dumps([FORMAT, max_pixels, self.classes, self.parts]).encode())
        for file, label in self.samples:
            try:
                info = os.stat(file)
                digest.update(f"{os.path.relpath(file, self.root)}\0{label}\0{info.st_size}\0"
                              f"{info.st_mtime_ns}\n".encode())
            except OSError:  # vanished since it was listed: decoding will skip it
                digest.update(f"{file}\0missing\n".encode())
        return digest.hexdigest()[:16]


def content_fingerprint(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    """16 hex digits identifying a dataset's content: every pixel, label and class name (equal iff the data is).

    ``images`` uint8 N x C x H x W, ``labels`` integers. Reads every byte (0.1 s per 200 MB).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([list(images.shape), classes]).encode())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(images, dtype=np.uint8))  # uint8: no byte order
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CachedImages:
    """An entry's data: ``images`` a copy-on-write memory map (N x C x H x W uint8), ``labels`` int64."""

    images: np.ndarray
    labels: np.ndarray
    header: dict[str, Any]


def entry_folder(root: Path, name: str, image_size: int | None) -> Path:
    """The folder of dataset ``name`` at ``image_size`` (None: the default size) in cache directory ``root``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name.rstrip("/\\")))[-40:] or "data"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return root / f"{stem}-{digest}-{image_size or 'auto'}"


def load_or_build(
    source: Source, image_size: int | None, max_pixels: int, cache_dir: str | Path | None = None,
    processes: int | None = None,
) -> CachedImages:
    """The decoded images of ``source``: mapped from the cache, built first when missing or out of date.

    ``processes`` decode in parallel (default: one per CPU this process may use). Raises
    :class:`DataError` for a cache directory that cannot be written or a disk too small for the
    images (checked before decoding starts).
    """
    folder = entry_folder(cache_root(cache_dir), source.name, image_size)
    fingerprint = source.fingerprint(max_pixels)
    found = _open(folder, fingerprint)
    if found is not None:
        return found
    _make_writable_folder(folder)
    with _locked(folder):
        found = _open(folder, fingerprint)  # another process built it while this one waited
        if found is not None:
            return found
        for leftover in folder.glob(_STAGING_PREFIX + "*"):  # a killed build's; the lock says none is running
            shutil.rmtree(leftover, ignore_errors=True)
        _build(folder, source, fingerprint, image_size, max_pixels, processes)
    found = _open(folder, fingerprint)
    if found is None:
        raise DataError(f"the cache of dataset {source.name!r} in {folder} could not be read back after building it")
    return found


def list_entries(cache_dir: str | Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, header)`` of every complete entry in the cache directory, by folder name."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    entries = []
    for folder in sorted(root.iterdir()):
        header = _read_header(folder)
        if header is not None:
            entries.append((folder, header))
    return entries


def entry_bytes(folder: Path) -> int:
    """Bytes on disk under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def clear_entries(cache_dir: str | Path | None = None, dataset: str | None = None) -> list[Path]:
    """Remove the cache entries (of ``dataset`` only, when given; any image size); return their folders.

    An entry being built (its lock held) is left alone.
    """
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        if not _is_entry(folder):  # a cache directory given by mistake (a home folder) keeps what is not ours
            continue
        header = _read_header(folder)
        if dataset is not None and (header is None or header.get("dataset") != dataset):
            continue
        with _locked(folder, wait=False) as got:
            if got:
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


_ENTRY_NAME = re.compile(r".*-[0-9a-f]{8}-(auto|[0-9]+)")


def _is_entry(folder: Path) -> bool:
    """Whether ``folder`` is a cache entry (named as :func:`entry_folder` names them, with its lock or header)."""
    return (folder.is_dir() and not folder.is_symlink() and _ENTRY_NAME.fullmatch(folder.name) is not None
            and ((folder / _LOCK).is_file() or (folder / HEADER).is_file()))


def _read_header(folder: Path) -> dict[str, Any] | None:
    try:
        header = json.loads((folder / HEADER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("format") == FORMAT else None


def _open(folder: Path, fingerprint: str) -> CachedImages | None:
    header = _read_header(folder)
    if header is None or header.get("source_fingerprint") != fingerprint:
        return None
    try:
        labels = np.load(folder / header["labels_file"], allow_pickle=False)
        shape = tuple(header["shape"])
        if shape[0] == 0:
            images = np.zeros(shape, dtype=np.uint8)
        else:
            # Copy-on-write: pages are shared with every process mapping the file; a write stays private.
            images = np.memmap(folder / header["images_file"], dtype=np.uint8, mode="c", shape=shape)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(labels) != shape[0]:
        return None
    return CachedImages(images=images, labels=labels, header=header)


def _make_writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / _LOCK, "a"):
            pass
    except OSError as exc:
        raise DataError(f"cache directory {folder.parent} is not writable ({exc.strerror or exc}); give "
                        f"--cache-dir (or ${CACHE_DIR_ENV}) a folder this user can write") from exc


@contextlib.contextmanager
def _locked(folder: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the entry's lock (an ``flock``, released when the process dies); yields whether it was taken."""
    with open(folder / _LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(folder: Path, source: Source, fingerprint: str, image_size: int | None, max_pixels: int,
           processes: int | None) -> None:
    started = time.monotonic()
    files = [file for file, _ in source.samples]
    with _decoders(len(files), processes) as run:
        headers = [item for part in run(read_headers, [(chunk, max_pixels) for chunk in _chunks(files)],
                                        None)
                   for item in part]
        kept = [i for i, item in enumerate(headers) if isinstance(item, tuple)]
        unreadable = [files[i] for i, item in enumerate(headers) if item == "unreadable"]
        too_large = [f"{os.path.relpath(files[i], source.root)} ({item[1][0]}x{item[1][1]})"
                     for i, item in enumerate(headers) if isinstance(item, list)]
        if too_large:
            logger.warning("skipped %d images in %s over the limit of %s pixels (%s): %s", len(too_large),
                           source.root, f"{max_pixels:,}", "CNNSEARCH_MAX_IMAGE_PIXELS", shown(too_large))
        gray = bool(kept) and all(headers[i][0] in GRAY_MODES for i in kept)
        size = image_size or default_side([side for i in kept for side in headers[i][1]])
        channels = 1 if gray else 3
        shape = [len(kept), channels, size, size]
        needed = _refuse_what_disk_cannot_hold(folder, source.name, shape)
        with staged_files(folder) as staging:
            images_path = staging.path(f"{fingerprint}.images")
            with open(images_path, "wb") as handle:
                handle.truncate(needed)
            tasks = [(str(images_path), shape, start, [files[i] for i in chunk], gray, size)
                     for start, chunk in zip(range(0, len(kept), _CHUNK), _chunks(kept), strict=True)]
            results = run(decode_rows, tasks, f"decoding {source.name}")
            failed = [task[2] + offset for task, part in zip(tasks, results, strict=True) for offset in part]
            rows = _compact(images_path, shape, failed)
            unreadable += [files[kept[i]] for i in failed]
            labels = np.array([source.samples[kept[i]][1] for i in rows], dtype=np.int64)
            np.save(staging.path(f"{fingerprint}.labels.npy"), labels)
            final_shape = [len(rows), channels, size, size]
            content = content_fingerprint(np.memmap(images_path, dtype=np.uint8, mode="r", shape=tuple(final_shape))
                                          if rows else np.zeros(final_shape, dtype=np.uint8), labels, source.classes)
            header = {
                "format": FORMAT, "dataset": source.name, "source_fingerprint": fingerprint,
                "classes": source.classes, "image_size": size, "requested_image_size": image_size,
                "shape": final_shape, "content_fingerprint": content, "skipped_unreadable": len(unreadable),
                "skipped_too_large": len(too_large), "parts": _decoded_parts(source.parts, [kept[i] for i in rows]),
                "images_file": images_path.name,
                "labels_file": f"{fingerprint}.labels.npy", "built_at": time.time(),
                "build_seconds": round(time.monotonic() - started, 3),
            }
            staging.write_text(HEADER, json.dumps(header, indent=1))
    for old in folder.iterdir():  # the data files of the fingerprint this build replaced
        if old.is_file() and old.name not in (HEADER, _LOCK, header["images_file"], header["labels_file"]):
            old.unlink(missing_ok=True)
    if unreadable:
        logger.warning("skipped %d unreadable images in %s: %s", len(unreadable), source.root,
                       shown([os.path.relpath(file, source.root) for file in unreadable]))


def _refuse_what_disk_cannot_hold(folder: Path, name: str, shape: list[int]) -> int:
    """The bytes of images of ``shape``; :class:`DataError` when the disk of ``folder`` has less free."""
    needed = int(np.prod(shape))
    free = shutil.disk_usage(folder).free
    if needed > free:
        count, channels, size, _ = shape
        raise DataError(f"the decoded cache of dataset {name!r} ({count} images of {channels}x{size}x{size}) needs "
                        f"{format_bytes(needed)} in {folder.parent}, which has {format_bytes(free)} free; free space, "
                        f"give --cache-dir (or ${CACHE_DIR_ENV}) on a larger disk, or a smaller --image-size")
    return needed


def _decoded_parts(parts: dict[str, int] | None, decoded: list[int]) -> dict[str, int] | None:
    """How many samples of each part are among ``decoded`` (sorted sample indices)."""
    if parts is None:
        return None
    ends = np.cumsum(list(parts.values()))
    counts = np.bincount(np.searchsorted(ends, decoded, side="right"), minlength=len(parts))
    return {part: int(count) for part, count in zip(parts, counts, strict=True)}


def default_side(sides: Sequence[int]) -> int:
    """The image size for images with these sides: their median, clamped to [MIN_SIDE, MAX_SIDE]."""
    return int(np.clip(np.median(sides), MIN_SIDE, MAX_SIDE)) if sides else MIN_SIDE


def shown(names: list[str], count: int = 5) -> str:
    """The first few of ``names``, and how many more there are."""
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def _chunks(items: list) -> list[list]:
    return [items[start:start + _CHUNK] for start in range(0, len(items), _CHUNK)]


@contextlib.contextmanager
def _decoders(count: int, processes: int | None) -> Iterator:
    """A function ``run(fn, tasks, bar)`` mapping ``fn`` over ``tasks`` in order, in worker processes when
    there is enough to do; ``bar`` (a description) shows a progress bar in images."""
    from tqdm import tqdm

    wanted = processes or len(os.sched_getaffinity(0))
    workers = min(wanted, -(-count // _CHUNK))
    pool = None
    if workers > 1:
        # fork where there is one (as torch's DataLoader): a spawned process would import the caller's
        # main module again (seconds of imports, and an error for a script without a __main__ guard);
        # the decoding processes only run PIL and numpy, which a fork leaves usable.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))

    def run(fn, tasks: list[tuple], bar: str | None) -> list:
        results = []
        with tqdm(total=sum(len(task[3]) if bar else 0 for task in tasks), unit="img", desc=bar,
                  disable=None if bar else True, dynamic_ncols=True) as progress:
            for task, result in zip(tasks, (pool.map(fn, tasks) if pool else map(fn, tasks)), strict=True):
                results.append(result)
                if bar:
                    progress.update(len(task[3]))
        return results

    try:
        yield run
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _compact(path: Path, shape: list[int], failed: list[int]) -> list[int]:
    """Move the rows that decoded to the front of the images file and cut it; return their old indices."""
    dropped = set(failed)
    rows = [i for i in range(shape[0]) if i not in dropped]
    if failed:
        images = np.memmap(path, dtype=np.uint8, mode="r+", shape=tuple(shape))
        for new, old in enumerate(rows):
            if new != old:
                images[new] = images[old]
        images.flush()
        del images
        os.truncate(path, len(rows) * int(np.prod(shape[1:])))
    return rows
