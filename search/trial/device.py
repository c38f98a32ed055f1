"""Which device a trial trains on, in which precision, and whether its kernels replay exactly."""

from __future__ import annotations

import os

import torch

from search.trial.errors import CnnSearchError
from search.trial.memory import available_host_memory, worker_memory_setting

NATIVE_BF16 = (8, 0)
"""The compute capability from which GPUs have bf16 in hardware (Ampere); older ones emulate it, slowly."""


def resolve_device(device: str | torch.device = "auto", worker_index: int = 0) -> torch.device:
    """The torch device that ``device`` names, always with an index on CUDA.

    ``auto`` is the worker's GPU (round-robin over the visible ones) or the CPU; ``cuda``
    is the current GPU (the first visible one unless the process chose another): CUDA
    calls such as ``torch.cuda.set_device`` refuse a CUDA device without an index.
    A GPU that is not visible is a :class:`CnnSearchError`.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", worker_index % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except RuntimeError:
        raise CnnSearchError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise CnnSearchError(f"--device {device}: no CUDA GPU is visible to this process; use --device cpu or auto")
    count = torch.cuda.device_count()
    if dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if dev.index >= count:
        visible = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise CnnSearchError(f"--device {device}: this process sees {count} GPU{'s' if count > 1 else ''} "
                             f"({visible}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                             "use one of those, cuda or auto")
    return dev


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed precision for ``device``: see :func:`amp_dtype_for_capability`; none on CPU."""
    if device.type != "cuda":
        return None
    return amp_dtype_for_capability(torch.cuda.get_device_capability(device))


def amp_dtype_for_capability(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on a GPU of compute ``capability`` that has it natively (>= 8.0), fp16 otherwise.

    ``torch.cuda.is_bf16_supported()`` also says yes on older GPUs (T4, V100) that emulate
    bf16 several times slower than fp16; fp16 needs the GradScaler, which the trainer adds.
    """
    return torch.bfloat16 if tuple(capability) >= NATIVE_BF16 else torch.float16


def use_deterministic_kernels() -> None:
    """Make this process's CUDA training replay bit for bit on the same GPU model and software.

    cuDNN's autotuner and several CUDA kernels (atomic adds in backward passes) pick or sum
    differently from run to run; this turns them to their deterministic forms. A kernel
    without one (the backward of ``AdaptiveAvgPool2d(5)`` in LeNet on CUDA) warns, naming
    itself, and runs as before rather than failing the trial: such a model does not
    replay exactly. cuBLAS needs its workspace setting before its first use, hence the
    environment variable. The trainer's generators are seeded either way. A CPU replay of a
    GPU trial still differs: the kernels are not the same.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


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
    given = worker_memory_setting()
    if given is not None:
        return given
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_host_memory() if device.type == "cpu" else None
