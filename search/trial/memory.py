"""Memory: what this process can still use, what counts as running out of it, giving it back.

A request that cannot fit (a dataset at a huge ``image_size``) is refused with the figures
instead of failing inside the allocator with a traceback, or swapping the machine to a halt.
Running out anyway (device or host, whichever error says so) prunes the trial with reason
``oom`` once its memory is given back; evaluation batches are sized by bytes.

``import torch`` costs seconds and :mod:`search.trial.datasets` (the CLI's listings, the Ray
driver) imports this module without it: torch is imported where it is used.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from search.trial.errors import CnnSearchError, TrialFailed

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def available_host_memory() -> int | None:
    """Bytes of host memory available to this process, or None where it cannot be told.

    Linux's ``MemAvailable`` (free memory plus what the kernel can reclaim), capped by the
    room left under a cgroup v2 memory limit (a container's ``--memory``).
    """
    try:
        lines = _MEMINFO.read_text().splitlines()
    except OSError:
        return None
    available = next((int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")), None)
    if available is None:
        return None
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        used = int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else max(0, min(available, int(limit) - used))


def megabytes_setting(raw: str, name: str, example: int) -> int | None:
    """Bytes from a setting of ``raw`` megabytes (10^6 bytes) named ``name``; None when it is empty.

    Raises :class:`CnnSearchError` for anything but a positive number (``example`` shows one).
    """
    raw = raw.strip()
    if not raw:
        return None
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0:  # also refuses nan
        raise CnnSearchError(f"{name}={raw!r} is not a positive number of megabytes; use e.g. {example}")
    return int(megabytes * 1e6)


WORKER_MEMORY_ENV = "CNNSEARCH_WORKER_MEMORY_MB"
"""Megabytes (10^6 bytes) a trial may use, instead of what the worker measures as available."""


def worker_memory_setting() -> int | None:
    """``$CNNSEARCH_WORKER_MEMORY_MB`` in bytes, or None when unset; a bad value is a :class:`CnnSearchError`.

    ``run`` and ``worker`` read it once before anything is created, so a typo is refused at once
    instead of failing every trial.
    """
    return megabytes_setting(os.environ.get(WORKER_MEMORY_ENV, ""), f"${WORKER_MEMORY_ENV}", 8000)


DATA_MEMORY_ENV = "CNNSEARCH_DATA_MEMORY_MB"
"""Megabytes (10^6 bytes) the images of a trial may take on its device; over that they are streamed."""


def data_memory_setting(environ: dict[str, str] | None = None) -> int | None:
    """``--data-memory`` / ``$CNNSEARCH_DATA_MEMORY_MB`` in bytes, or None when unset."""
    return megabytes_setting((os.environ if environ is None else environ).get(DATA_MEMORY_ENV, ""),
                             f"--data-memory / ${DATA_MEMORY_ENV}", 4000)


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``16.2 GB``, ``512 B`` (powers of 1000, up to TB)."""
    units = ("B", "kB", "MB", "GB", "TB")
    value, unit = float(n), 0
    while value >= 1000 and unit < len(units) - 1:
        value, unit = value / 1000, unit + 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {units[unit]}"


OUT_OF_MEMORY_MARKS = (
    "CUDA out of memory",  # the caching allocator's message, also raised as RuntimeError by some paths
    "CUDA error: out of memory",  # cudaErrorMemoryAllocation from a kernel launch or a library call
    "CUDNN_STATUS_ALLOC_FAILED",  # cuDNN's workspace
    "CUBLAS_STATUS_ALLOC_FAILED",  # cuBLAS's handle or workspace
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "DefaultCPUAllocator: can't allocate memory",  # the host's allocator (torch tensors on the CPU)
    "MPS backend out of memory",
)
"""Messages of errors that are out-of-memory although not raised as ``torch.OutOfMemoryError``."""

EVAL_BUDGET_BYTES = 64 * 2**20
"""Float32 input of one evaluation batch: 64 MiB is 1024 images up to about 3x73x73, 111 at 3x224x224."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means that the device or the host ran out of memory (then the config is too big)."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in OUT_OF_MEMORY_MARKS)


def out_of_memory_message(exc: BaseException, device: torch.device) -> str:
    """One line for a trial that ran out of memory: where, and the first line of the error."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = "host memory" if isinstance(exc, MemoryError) or "CPUAllocator" in first else f"memory on {device}"
    return f"out of {where}: {first}"


def oom_as_trial_failed(call: Callable[[], T], device: torch.device) -> T:
    """``call()``; running out of memory in it (any kind: :func:`is_out_of_memory`) is ``TrialFailed("oom")``.

    Raised once the failed call's memory is given back: out of the ``except`` block, where
    the error and its traceback (holding the call's model, optimizer and activations) are
    gone. The TrialFailed does not chain the error for the same reason.
    """
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - out of memory is classified here, anything else re-raised
        if not is_out_of_memory(exc):
            raise
        message = out_of_memory_message(exc, device)
    release_memory(device)
    raise TrialFailed("oom", message)


def release_memory(device: torch.device) -> None:
    """Give the memory of what is no longer referenced back: to the host, and to the GPU driver on CUDA.

    Call it once the references are gone (after the ``except`` block that caught an
    out-of-memory error: the exception's traceback holds the failed trial's model and
    activations), else nothing is freed. The collection finds reference cycles that
    hold tensors; ``empty_cache`` hands the allocator's cached blocks back to the driver,
    where other processes on the same GPU can use them.
    """
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def eval_batch_size(input_shape: tuple[int, ...], most: int, budget_bytes: int = EVAL_BUDGET_BYTES) -> int:
    """Images per evaluation batch whose float32 input of ``input_shape`` (C, H, W) fits ``budget_bytes``.

    At least 1 and at most ``most``: small images keep large batches, large images get
    batches whose activations scale with them instead of a fixed count.
    """
    per_image = 4 * max(1, math.prod(input_shape))
    return max(1, min(most, budget_bytes // per_image))
