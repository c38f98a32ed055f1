"""One configuration in, a trained model and its measured metrics out.

``train(config, data, device, report)`` is the whole of a trial's work and a pure
function of its arguments: no globals read, no argv, and the process-wide random state
is left as it was found (``torch.random.fork_rng``). The data is already on the device
as uint8 tensors (:mod:`search.trial.data`); batches are index slices and augmentation runs on
whole batches, so the hot loop has no DataLoader and no per-sample Python.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from search.trial.augment import Augmenter
from search.trial.data import TrialData
from search.trial.device import amp_dtype_for, resolve_device
from search.trial.errors import TrialFailed
from search.trial.finetune import Frozen, freeze, param_groups
from search.trial.measure import activation_bytes, count_flops, count_params, measure_latency_ms
from search.trial.memory import eval_batch_size, oom_as_trial_failed
from search.trial.metrics import TrialMetrics
from search.trial.models import build_model
from search.trial.scores import Score, validation_scores
from spaces.schema import TrialConfig

log = logging.getLogger(__name__)

Report = Callable[[int, dict[str, float]], None]
"""``report(epoch, values)`` after every epoch (epochs count from 1); ``values`` holds the epoch's
``val_accuracy``, ``val_loss`` and each requested score (:mod:`search.trial.scores`) by its key.

It may raise (``optuna.TrialPruned`` from a pruner): training stops and the exception
propagates unchanged to the caller.
"""

EVAL_BATCH = 1024
CHECK_EVERY = 50  # steps between finiteness checks: each check syncs a GPU once


def make_optimizer(config: TrialConfig, params) -> torch.optim.Optimizer:
    """The optimizer the config names, at its peak learning rate (param groups may set their own)."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd,
                               nesterov=config.momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def make_schedule(config: TrialConfig, optimizer: torch.optim.Optimizer,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per batch over ``total_steps``."""
    name = config.schedule
    sched = torch.optim.lr_scheduler
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                                total_steps=max(2, total_steps))
    if name == "step":
        # The classic step schedule: divide by 10 at half and at three quarters of training.
        return sched.MultiStepLR(optimizer, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    return sched.LambdaLR(optimizer, lambda _: 1.0)


def make_loss(config: TrialConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy, or focal loss, both with the config's label smoothing."""
    smoothing = config.label_smoothing
    if config.loss != "focal":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)
    gamma = config.focal_gamma

    # Multi-class softmax focal loss (Lin et al. 2017): torchvision's sigmoid_focal_loss is the
    # binary/multi-label form, so this one is written out.
    def focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
        p_true = torch.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        return ((1.0 - p_true).clamp_min(0.0) ** gamma * ce).mean()

    return focal


@torch.inference_mode()
def evaluate(model: nn.Module, data: TrialData, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None = None, deadline: float | None = None,
             logits_out: list[torch.Tensor] | None = None) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on uint8 images ``x`` with labels ``y``.

    Past ``deadline`` (``time.monotonic()``), checked after every batch, it raises
    :class:`TrialFailed` with reason ``timeout``. ``logits_out``, when given, receives each
    batch's float32 logits (on the device): what the scores are computed from, without a second pass.
    """
    model.eval()
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=y.device, dtype=torch.float32)
    autocast = torch.autocast(y.device.type, dtype=amp) if amp else nullcontext()
    size = eval_batch_size(data.input_shape, EVAL_BATCH)
    for start in range(0, len(y), size):
        xb = _to_input(data, x[start:start + size])
        yb = y[start:start + size]
        with autocast:
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        if logits_out is not None:
            logits_out.append(logits.float())
        correct += (logits.argmax(1) == yb).sum()
        _check_deadline(deadline, "in a validation pass")
    n = max(1, len(y))
    return correct.item() / n, loss_sum.item() / n


def _to_input(data: TrialData, x_uint8: torch.Tensor, augment: Augmenter | None = None) -> torch.Tensor:
    """uint8 images -> normalised float model input, augmented when ``augment`` is given."""
    x = augment(x_uint8.float().div_(255.0)) if augment is not None else x_uint8
    x = data.normalize(x)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def fit(config: TrialConfig, data: TrialData, device: torch.device | str,
        report: Report | None = None, *, measure: bool = True,
        deadline: float | None = None, scores: tuple[Score, ...] = ()) -> tuple[nn.Module, TrialMetrics]:
    """Train one model from ``config`` on ``data``; return the model and its metrics.

    ``scores`` are computed from every epoch's validation pass besides accuracy and loss
    (their curves and last values are in the metrics); one that raises fails the trial
    (:class:`search.trial.scores.ScoreFailed`).

    ``deadline`` is a ``time.monotonic()`` value after which the trial fails with reason
    ``timeout``. NaN/inf loss fails it with ``nan_loss``, running out of device or host
    memory (whichever error says so, :func:`search.trial.memory.is_out_of_memory`) with
    ``oom`` (:class:`TrialFailed`), the failed run's memory released by then. See
    :func:`train` for the metrics.
    """
    device = resolve_device(device)
    cuda_devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        return oom_as_trial_failed(lambda: _fit(config, data, device, report, measure, deadline, scores), device)


def train(config: TrialConfig, data: TrialData, device: torch.device | str,
          report: Report | None = None, *, measure: bool = True,
          deadline: float | None = None) -> TrialMetrics:
    """Train one model from ``config`` on ``data`` and return its metrics (:class:`TrialMetrics`).

    ``latency_ms`` (ms/image at batch 1) and ``throughput`` (inference img/s over the last
    epoch's validation pass, batches of at most ``EVAL_BATCH`` uint8 images normalised on the
    device) are measured only when ``measure``; ``metrics.to_dict()`` is the JSON-able form.
    """
    return fit(config, data, device, report, measure=measure, deadline=deadline)[1]


def training_memory(model: nn.Module, config: TrialConfig, data: TrialData, device: torch.device) -> int:
    """Bytes that training ``model`` (built from ``config``) on ``data`` needs on ``device``, estimated.

    The weights, their gradients and the optimizer's state (two values a weight for Adam and
    AdamW, one for SGD with momentum), plus the larger of a training step's activations
    (every layer's output at the batch the training uses, kept for the backward pass, and
    the gradients of the two largest) and a validation batch's (the largest layer's input and
    output at the batch :func:`search.trial.memory.eval_batch_size` gives). Activations are measured per image
    (:func:`search.trial.measure.activation_bytes`; pass a model built on the meta device
    and nothing is allocated) and count at the autocast dtype's size under mixed precision.
    The data itself is already on the device and not counted.
    """
    states = {"adam": 2, "adamw": 2}.get(config.optimizer, 1 if config.momentum > 0 else 0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) * (2 + states)
    per_image, largest = activation_bytes(model, data.input_shape)
    amp = amp_dtype_for(device)
    scale = torch.finfo(amp).bits / 32 if amp is not None else 1.0
    train_batch = min(config.batch_size, len(data.train_y))
    eval_batch = min(eval_batch_size(data.input_shape, EVAL_BATCH), len(data.val_y))
    activations = max((per_image + 2 * largest) * train_batch, 2 * largest * eval_batch) * scale
    return int(weights + activations)


@dataclass
class _Run:
    """One training run's moving parts: the model and what steps it, built in :func:`_start`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    scaler: torch.amp.GradScaler | None
    amp: torch.dtype | None
    generator: torch.Generator
    augment: Augmenter | None
    frozen: Frozen
    batch_size: int
    steps_per_epoch: int
    notes: list[str]
    steps: int = 0


def _fit(config: TrialConfig, data: TrialData, device: torch.device, report: Report | None,
         measure: bool, deadline: float | None, scores: tuple[Score, ...]) -> tuple[nn.Module, TrialMetrics]:
    run = _start(config, data, device)
    curves: dict[str, list[float]] = {"val_accuracy": [], "val_loss": [], "train_loss": [], "lr": [],
                                      **{score.key: [] for score in scores}}
    y_true = data.val_y.cpu().numpy() if scores else None
    started = time.perf_counter()
    eval_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        if epoch == config.unfreeze_epoch:
            run.frozen.release()
        curves["lr"].append(run.optimizer.param_groups[0]["lr"])
        loss_sum = _train_epoch(run, data, device, epoch, deadline)
        eval_started = time.perf_counter()
        logits: list[torch.Tensor] | None = [] if scores else None
        # evaluate() ends in .item(): synced
        val_acc, val_loss = evaluate(run.model, data, data.val_x, data.val_y, run.amp, deadline, logits)
        eval_seconds = time.perf_counter() - eval_started
        curves["train_loss"].append(loss_sum.item() / run.steps_per_epoch)
        log.debug("epoch %d: val_accuracy %.4f val_loss %.4f", epoch, val_acc, val_loss)
        if not math.isfinite(val_loss):
            raise TrialFailed("nan_loss", f"validation loss is {val_loss} after epoch {epoch}")
        values = {"val_accuracy": val_acc, "val_loss": val_loss}
        if logits is not None:  # after the NaN check: a diverged trial is pruned for it, not failed by a score
            values.update(validation_scores(scores, y_true, torch.cat(logits).cpu().numpy()))
        for key, value in values.items():
            curves[key].append(value)
        if report is not None:
            report(epoch, values)
    train_seconds = time.perf_counter() - started
    metrics = _metrics(run, data, device, curves, train_seconds, eval_seconds if measure else None)
    return run.model, replace(metrics, scores={score.key: curves[score.key][-1] for score in scores})


def _start(config: TrialConfig, data: TrialData, device: torch.device) -> _Run:
    """The model on ``device`` and its optimizer, schedule, loss, mixed precision and augmentation."""
    amp = amp_dtype_for(device)
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True  # autotuning picks kernels by timing: off in deterministic mode
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "expect_input"):  # a pretrained backbone renormalises to what its weights expect
        model.expect_input(data.mean, data.std)
    frozen = freeze(model, config)
    notes = list(getattr(model, "notes", [])) + frozen.notes
    n_train = len(data.train_y)
    batch_size = min(config.batch_size, n_train)
    if batch_size < config.batch_size:
        notes.append(f"batch_size {config.batch_size} reduced to {batch_size}: the train split has "
                     f"{n_train} images")
    steps_per_epoch = math.ceil(n_train / batch_size)
    optimizer = make_optimizer(config, param_groups(model, config))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    augment = Augmenter(config, data.input_shape, generator=generator)
    return _Run(
        model=model, optimizer=optimizer, schedule=make_schedule(config, optimizer, config.epochs * steps_per_epoch),
        loss_fn=make_loss(config),
        # GradScaler only for fp16: bf16 has fp32's range and needs no loss scaling.
        scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
        amp=amp, generator=generator, augment=augment if augment.active else None, frozen=frozen, batch_size=batch_size,
        steps_per_epoch=steps_per_epoch, notes=notes,
    )


def _train_epoch(run: _Run, data: TrialData, device: torch.device, epoch: int,
                 deadline: float | None) -> torch.Tensor:
    """One pass over the training images; returns the summed loss (on the device, not synced)."""
    run.model.train()
    run.frozen.keep_eval()
    loss_sum = torch.zeros((), device=device)
    autocast = torch.autocast(device.type, dtype=run.amp) if run.amp else nullcontext()
    for step, (x_uint8, yb) in enumerate(data.train_batches(run.batch_size, run.generator), 1):
        xb = _to_input(data, x_uint8, run.augment)
        with autocast:
            loss = run.loss_fn(run.model(xb), yb)
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            loss.backward()
            run.optimizer.step()
        run.schedule.step()
        loss_sum += loss.detach().float()
        run.steps += 1
        # The clock after every step (no device sync): one long step is not interrupted, the next
        # check comes right after it. The finiteness check syncs a GPU, so it runs less often.
        _check_deadline(deadline, f"at step {step}/{run.steps_per_epoch} of epoch {epoch}")
        if run.steps % CHECK_EVERY == 0:
            _check_finite(loss_sum, epoch)
    _check_finite(loss_sum, epoch)
    return loss_sum


def _metrics(run: _Run, data: TrialData, device: torch.device, curves: dict[str, list[float]],
             train_seconds: float, eval_seconds: float | None) -> TrialMetrics:
    """What the trained model measured; latency and throughput only when ``eval_seconds`` is given."""
    model = run.model
    model.eval()
    params, flops = count_params(model), count_flops(model, data.input_shape)
    latency_ms = throughput = None
    if eval_seconds is not None:
        latency_ms = measure_latency_ms(model, data.input_shape, device, amp_dtype=run.amp)
        # Inference throughput comes from the last epoch's validation pass, which ran anyway: timing
        # extra batches cost ~0.3 s per trial on CPU (12 % of a 2.5-s trial, benchmarks/overhead.py).
        # In a 1-epoch trial on CUDA that pass is the first in eval mode and includes cudnn's
        # autotuning for its shapes: such a trial's throughput reads low.
        throughput = len(data.val_y) / max(eval_seconds, 1e-9)
    return TrialMetrics(
        val_accuracy=curves["val_accuracy"][-1], val_loss=curves["val_loss"][-1],
        best_val_accuracy=max(curves["val_accuracy"]), curves=curves, epochs_run=len(curves["val_accuracy"]),
        params=params, flops=flops, train_seconds=train_seconds, device=str(device),
        amp=str(run.amp).removeprefix("torch.") if run.amp else None, notes=run.notes,
        latency_ms=latency_ms, throughput=throughput,
    )


def _check_finite(loss_sum: torch.Tensor, epoch: int) -> None:
    """Stop a trial that is training on garbage."""
    if not torch.isfinite(loss_sum):
        raise TrialFailed("nan_loss", f"training loss became {loss_sum.item()} in epoch {epoch}")


def _check_deadline(deadline: float | None, where: str) -> None:
    """Stop a trial that has run out of time; ``where`` it was goes in the message."""
    if deadline is not None and time.monotonic() > deadline:
        raise TrialFailed("timeout", f"trial exceeded its time limit {where}")
