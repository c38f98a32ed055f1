"""What a model costs: parameters, FLOPs, activations and latency, measured the same way for every trial.

Inference throughput is timed on the validation pass a trial runs anyway (:mod:`search.trial.train`).

FLOPs come from torch's own counter (``torch.utils.flop_counter.FlopCounterMode``), which
counts a multiply-add as 2 FLOPs and covers convs and matmuls (not activations, pools or
normalisation). Timings run in eval mode under ``torch.inference_mode`` on zero-filled
inputs: no random draw, so measuring a model mid-trial does not shift the trial's random
stream. Every function leaves the model's train/eval mode as it found it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """The number of trainable parameters (``requires_grad``) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass of ``model`` at batch 1 on an input of ``input_shape`` (C, H, W).

    Runs in eval mode without grad on the model's device (CPU for a model without parameters).
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    with _mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def activation_bytes(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Bytes of activations a training step keeps for its backward pass, per image: all, and the largest.

    What autograd saves (parameters excepted) in a training-mode forward pass at batch 2
    (batch norm needs two samples), halved. On the meta device (a model built under
    ``torch.device("meta")``) nothing is allocated and it takes milliseconds, also for a
    model too big to build; elsewhere it allocates what it measures, twice over.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    weights = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}  # by identity: a tensor two ops keep is stored once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # A Linear keeps its weight as a transposed view (``_base`` is the weight): not an activation.
        if id(tensor) not in weights and id(tensor._base) not in weights:
            saved[id(tensor)] = tensor
        return tensor

    x = torch.zeros(2, *input_shape, device=device)
    with _mode(model, training=True), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    sizes = [t.numel() * t.element_size() // 2 for t in saved.values()] or [0]
    return sum(sizes), max(sizes)


def measure_latency_ms(model: nn.Module, input_shape: tuple[int, int, int], device: torch.device | str,
                       repeats: int = 20, warmup: int = 3, amp_dtype: torch.dtype | None = None) -> float:
    """Median milliseconds per image at batch 1 over ``repeats`` timed forward passes.

    ``model`` is moved to ``device`` in place (``nn.Module.to``), and to channels_last as
    well when ``amp_dtype`` is given, in which case the forward runs under
    ``torch.autocast(dtype=amp_dtype)``. On CUDA each pass is bracketed by
    ``torch.cuda.synchronize`` so the time is the kernels', not the launch's.
    """
    times = _time_forward(model, (1, *input_shape), torch.device(device), repeats, warmup, amp_dtype)
    return statistics.median(times) * 1000.0


def _time_forward(model: nn.Module, shape: tuple[int, ...], device: torch.device, repeats: int, warmup: int,
                  amp_dtype: torch.dtype | None) -> list[float]:
    """Seconds of each of ``repeats`` forward passes on a zero batch of ``shape``, after ``warmup``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
    x = torch.zeros(shape, device=device)
    model.to(device)
    if amp_dtype is not None:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())
    cuda = device.type == "cuda"
    times = []
    with _mode(model), torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


@contextmanager
def _mode(model: nn.Module, training: bool = False) -> Iterator[None]:
    """Eval (or train) mode for the block, then each submodule's own mode back (frozen BNs stay frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
