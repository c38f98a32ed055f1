"""One configuration in, a trained model and its measured metrics out.

``train(config, data, device, report)`` is the whole of a trial's work and a pure
function of its arguments: no globals read, no argv, and the process-wide random state
is left as it was found (``torch.random.fork_rng``). The data is already on the device
as uint8 tensors (:mod:`search.data`); batches are index slices and augmentation runs on
whole batches, so the hot loop has no DataLoader and no per-sample Python.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search.augment import Augmenter
from search.data import TrialData, batches
from search.errors import TrialFailed
from search.measure import count_flops, count_params, measure_latency_ms
from search.models import build_model
from spaces.schema import complete_config

log = logging.getLogger(__name__)

Report = Callable[[int, float, float], None]
"""``report(epoch, val_accuracy, val_loss)`` after every epoch (epochs count from 1).

It may raise (``optuna.TrialPruned`` from a pruner): training stops and the exception
propagates unchanged to the caller.
"""

EVAL_BATCH = 1024
CHECK_EVERY = 50  # steps between finiteness/deadline checks: each check syncs a GPU once


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Mixed precision for ``device``: bf16 where the GPU supports it, fp16 otherwise, none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_optimizer(config: dict[str, Any], params) -> torch.optim.Optimizer:
    """The optimizer the config names, at its peak learning rate."""
    name, lr, wd = config["optimizer"], config["lr"], config["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config["momentum"], weight_decay=wd,
                               nesterov=config["momentum"] > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def make_schedule(config: dict[str, Any], optimizer: torch.optim.Optimizer,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per batch over ``total_steps``."""
    name = config["schedule"]
    sched = torch.optim.lr_scheduler
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=max(2, total_steps))
    if name == "step":
        # The classic step schedule: divide by 10 at half and at three quarters of training.
        return sched.MultiStepLR(optimizer, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    return sched.LambdaLR(optimizer, lambda _: 1.0)


def make_loss(config: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy, or focal loss, both with the config's label smoothing."""
    smoothing = config["label_smoothing"]
    if config["loss"] != "focal":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)
    gamma = config["focal_gamma"]

    # Multi-class softmax focal loss (Lin et al. 2017): torchvision's sigmoid_focal_loss is the
    # binary/multi-label form, so this one is written out.
    def focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
        p_true = torch.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        return ((1.0 - p_true).clamp_min(0.0) ** gamma * ce).mean()

    return focal


@torch.inference_mode()
def evaluate(model: nn.Module, data: TrialData, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None = None) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on uint8 images ``x`` with labels ``y``."""
    model.eval()
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=y.device, dtype=torch.float32)
    autocast = torch.autocast(y.device.type, dtype=amp) if amp else nullcontext()
    for start in range(0, len(y), EVAL_BATCH):
        xb = _to_input(data, x[start:start + EVAL_BATCH])
        yb = y[start:start + EVAL_BATCH]
        with autocast:
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    n = max(1, len(y))
    return correct.item() / n, loss_sum.item() / n


def _to_input(data: TrialData, x_uint8: torch.Tensor, augment: Augmenter | None = None) -> torch.Tensor:
    """uint8 images -> normalised float model input, augmented when ``augment`` is given."""
    x = augment(x_uint8.float().div_(255.0)) if augment is not None else x_uint8
    x = data.normalize(x)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def fit(config: dict[str, Any], data: TrialData, device: torch.device | str,
        report: Report | None = None, *, measure: bool = True,
        deadline: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train one model from ``config`` on ``data``; return the model and its metrics.

    ``deadline`` is a ``time.monotonic()`` value after which the trial fails with reason
    ``timeout``. NaN/inf loss fails it with ``nan_loss``, running out of device memory
    with ``oom`` (:class:`TrialFailed`). See :func:`train` for the metrics.
    """
    config = complete_config(dict(config))
    device = torch.device(device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config["seed"])
        try:
            return _fit(config, data, device, report, measure, deadline)
        except torch.OutOfMemoryError as exc:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrialFailed("oom", f"out of memory on {device}: {str(exc).splitlines()[0]}") from exc


def train(config: dict[str, Any], data: TrialData, device: torch.device | str,
          report: Report | None = None, *, measure: bool = True,
          deadline: float | None = None) -> dict[str, Any]:
    """Train one model from ``config`` on ``data`` and return its metrics (a JSON-able dict).

    Keys: ``val_accuracy`` and ``val_loss`` (last epoch), ``best_val_accuracy``,
    ``curves`` (per-epoch ``val_accuracy``, ``val_loss``, ``train_loss``, ``lr``),
    ``epochs_run``, ``params``, ``flops`` (one forward pass, batch 1), ``train_seconds``
    (training and per-epoch validation, wall time), ``latency_ms`` (ms/image at batch 1)
    and ``throughput`` (inference img/s over the last epoch's validation pass, batches of
    ``EVAL_BATCH`` uint8 images normalised on the device; both only when ``measure``), ``device``,
    ``amp`` and ``notes`` (adjustments the model builder made, e.g. a clamped depth).
    """
    return fit(config, data, device, report, measure=measure, deadline=deadline)[1]


def _fit(config: dict[str, Any], data: TrialData, device: torch.device, report: Report | None,
         measure: bool, deadline: float | None) -> tuple[nn.Module, dict[str, Any]]:
    amp = amp_dtype_for(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    notes = list(getattr(model, "notes", []))

    n_train = len(data.train_y)
    batch_size = min(config["batch_size"], n_train)
    if batch_size < config["batch_size"]:
        notes.append(f"batch_size {config['batch_size']} reduced to {batch_size}: the train split has "
                     f"{n_train} images")
    steps_per_epoch = math.ceil(n_train / batch_size)
    epochs = config["epochs"]
    optimizer = make_optimizer(config, model.parameters())
    schedule = make_schedule(config, optimizer, epochs * steps_per_epoch)
    loss_fn = make_loss(config)
    # GradScaler only for fp16: bf16 has fp32's range and needs no loss scaling.
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    autocast = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    generator = torch.Generator(device=device).manual_seed(config["seed"])
    augment = Augmenter(config, data.input_shape, generator=generator)
    augment = augment if augment.active else None

    curves: dict[str, list[float]] = {"val_accuracy": [], "val_loss": [], "train_loss": [], "lr": []}
    started = time.perf_counter()
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        curves["lr"].append(optimizer.param_groups[0]["lr"])
        for idx in batches(n_train, batch_size, generator, device):
            xb = _to_input(data, data.train_x[idx], augment)
            yb = data.train_y[idx]
            with autocast:
                loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            schedule.step()
            loss_sum += loss.detach().float()
            step += 1
            if step % CHECK_EVERY == 0:
                _check(loss_sum, epoch, deadline)
        _check(loss_sum, epoch, deadline)
        eval_started = time.perf_counter()
        val_acc, val_loss = evaluate(model, data, data.val_x, data.val_y, amp)  # ends in .item(): synced
        eval_seconds = time.perf_counter() - eval_started
        curves["train_loss"].append(loss_sum.item() / steps_per_epoch)
        curves["val_accuracy"].append(val_acc)
        curves["val_loss"].append(val_loss)
        log.debug("epoch %d: val_accuracy %.4f val_loss %.4f", epoch, val_acc, val_loss)
        if not math.isfinite(val_loss):
            raise TrialFailed("nan_loss", f"validation loss is {val_loss} after epoch {epoch}")
        if report is not None:
            report(epoch, val_acc, val_loss)
    train_seconds = time.perf_counter() - started

    model.eval()
    metrics: dict[str, Any] = {
        "val_accuracy": curves["val_accuracy"][-1],
        "val_loss": curves["val_loss"][-1],
        "best_val_accuracy": max(curves["val_accuracy"]),
        "curves": curves,
        "epochs_run": epochs,
        "params": count_params(model),
        "flops": count_flops(model, data.input_shape),
        "train_seconds": train_seconds,
        "device": str(device),
        "amp": str(amp).removeprefix("torch.") if amp else None,
        "notes": notes,
    }
    if measure:
        metrics["latency_ms"] = measure_latency_ms(model, data.input_shape, device, amp_dtype=amp)
        # Inference throughput comes from the last epoch's validation pass, which ran anyway: timing
        # extra batches cost ~0.3 s per trial on CPU (12 % of a 2.5-s trial, benchmarks/overhead.py).
        # In a 1-epoch trial on CUDA that pass is the first in eval mode and includes cudnn's
        # autotuning for its shapes: such a trial's throughput reads low.
        metrics["throughput"] = len(data.val_y) / max(eval_seconds, 1e-9)
    return model, metrics


def _check(loss_sum: torch.Tensor, epoch: int, deadline: float | None) -> None:
    """Stop a trial that is training on garbage or has run out of time."""
    if not torch.isfinite(loss_sum):
        raise TrialFailed("nan_loss", f"training loss became {loss_sum.item()} in epoch {epoch}")
    if deadline is not None and time.monotonic() > deadline:
        raise TrialFailed("timeout", f"trial exceeded its time limit in epoch {epoch}")
