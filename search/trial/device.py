"""Which device a trial trains on, and in which precision."""

from __future__ import annotations

import torch

from search.trial.errors import CnnSearchError


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
