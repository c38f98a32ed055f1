"""Which device a trial trains on, and in which precision."""

from __future__ import annotations

import os

import torch

from search.trial.errors import CnnSearchError
from search.trial.memory import available_host_memory


def resolve_device(device: str | torch.device = "auto", worker_index: int = 0) -> torch.device:
    """``auto`` is the worker's GPU (round-robin over the visible ones) or the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", worker_index % torch.cuda.device_count())
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CnnSearchError("--device cuda: no CUDA GPU is visible to this process; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise CnnSearchError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed precision for ``device``: bf16 where the GPU supports it, fp16 otherwise, none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


MEMORY_ENV = "CNNSEARCH_WORKER_MEMORY_MB"
"""Megabytes (10^6 bytes) a trial may use, instead of what the worker measures as available."""


def available_memory(device: torch.device) -> int | None:
    """Bytes a trial on ``device`` can still allocate, or None where this cannot be known.

    ``$CNNSEARCH_WORKER_MEMORY_MB`` when set (a worker sharing its machine, or a test); else on
    a GPU the device's free memory plus what torch's caching allocator holds unused in this
    process (blocks of an earlier trial, which the next one reuses); on the CPU
    :func:`search.trial.memory.available_host_memory`.
    The data already loaded for the study is in use, so it is not counted as available.

    Raises:
        CnnSearchError: a ``$CNNSEARCH_WORKER_MEMORY_MB`` that is not a positive number.
    """
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            megabytes = float(raw)
        except ValueError:
            megabytes = -1.0
        if not megabytes > 0:
            raise CnnSearchError(f"${MEMORY_ENV}={raw!r} is not a positive number of megabytes; use e.g. 8000")
        return int(megabytes * 1e6)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_host_memory() if device.type == "cpu" else None
