"""One trial, start to finish: config from the space, training, and everything recorded.

Everything a user or the dashboard needs to know about a trial lands in the storage as
it happens: the config and worker identity when it starts, per-epoch validation
accuracy as intermediate values (the learning curve the dashboard draws), the metrics
when it ends, and a reason whenever it is pruned or fails.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from search.study.checkpoints import TrialCheckpoint, keep_checkpoint, lineage, trial_checkpoint
from search.study.errors import WorkerStopped
from search.study.records import TrialOutcome
from search.study.spec import StudySpec
from search.trial.backbones import native_size
from search.trial.data import TrialData
from search.trial.device import available_memory
from search.trial.errors import TrialFailed
from search.trial.measure import count_params
from search.trial.memory import format_bytes
from search.trial.metrics import TrialMetrics
from search.trial.models import as_built, build_model
from search.trial.scores import Score
from search.trial.train import fit, training_memory
from spaces.schema import TrialConfig
from storage.engine import DATABASE_LOST
from storage.records import (
    CONFIG,
    CONSTRAINTS,
    CURVES,
    DATA_FEED,
    DEVICE,
    EPOCHS_RUN,
    FAIL_MESSAGE,
    FAIL_REASON,
    FOLD_VAL_ACCURACY,
    FOLD_VAL_ACCURACY_STD,
    HOST,
    LIVE_CURVE,
    ORIGIN,
    PARAMS,
    PID,
    RESUME_NOTE,
    RESUMED_FROM_EPOCH,
    SEED,
    STARTED,
    THREADS,
    TRAIN_SECONDS,
    UNPRUNED_ORIGINS,
    WORKER,
)

log = logging.getLogger(__name__)

def worker_identity(device: torch.device, worker: str | None = None) -> dict[str, Any]:
    """Who runs a trial: recorded on it, and what ``cnnsearch status`` shows.

    ``threads`` (CPU threads of torch) is part of it because CPU kernels split their sums
    by thread: a retrain matches a trial bit for bit only with the same thread count.
    """
    host = socket.gethostname()
    return {HOST: host, PID: os.getpid(), WORKER: worker or f"{host}:{os.getpid()}",
            DEVICE: str(device), THREADS: torch.get_num_threads()}


def run_trial(study: optuna.Study, trial_id: int, spec: StudySpec, data: TrialData,
              device: torch.device, identity: dict[str, Any], *,
              stop: Callable[[], None] | None = None) -> TrialOutcome:
    """Run the claimed (RUNNING) trial ``trial_id`` and tell the study its outcome.

    Pruned trials (by the pruner, or for NaN loss, out-of-memory or timeout, so the
    sampler learns to avoid them) end PRUNED with ``fail_reason``; any other error ends
    FAIL with its reason and the worker goes on. KeyboardInterrupt and WorkerStopped
    propagate with the trial still RUNNING: the worker ends it (hands it back, or fails it).

    The trial continues from the checkpoint of its lineage (:mod:`search.study.checkpoints`) when
    there is one, and checkpoints after every epoch; the checkpoint is removed when the trial
    ends COMPLETE, PRUNED or FAIL (unless ``--keep-checkpoints``), and left for the retry when an
    interrupt or a lost database stops it. ``stop`` is asked after every training step (see
    :data:`search.trial.train.Stop`): what it raises stops the trial with the state at that step saved.
    """
    trial = optuna.Trial(study, trial_id)
    progress: _Progress | None = None  # set when training starts
    checkpoint: TrialCheckpoint | None = None
    # "start" / "warm_start" when fill_budget enqueued a known config (never pruned); "low_cost" for the
    # first drawn trial with the space's low_cost values, pruned like any drawn trial.
    origin = trial.user_attrs.get(ORIGIN)
    for key, value in identity.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(STARTED, time.time())
    trial.set_user_attr(DATA_FEED, data.feed)
    try:
        config = TrialConfig.from_dict(spec.space.suggest(trial), where=spec.space.source)
        before = trial.storage.get_trial(trial_id)  # what an earlier claim of this trial recorded
        line = lineage(before)
        if "seed" not in spec.space.params and "seed" not in spec.space.fixed:
            # A distinct, reproducible seed per trial, the recipe records it; a retry has its first attempt's
            # seed, so it continues that training (its checkpoint) and ends as that trial would have.
            config = config.replace(seed=spec.seed * 100_000 + line)
        trial.set_user_attr(CONFIG, as_built(config, data.input_shape).to_dict())  # what is trained
        trial.set_user_attr(SEED, config.seed)
        # Until measured, a trial counts as feasible: the samplers need one value per constraint.
        _record_constraints(trial, spec, {})
        _refuse_before_training(trial, spec, config, data, device)
        deadline = time.monotonic() + spec.trial_timeout if spec.trial_timeout else None
        progress = _Progress()
        report = _Reporter(trial, spec, progress, prune=origin not in UNPRUNED_ORIGINS, last_epoch=config.epochs,
                           reported=set(before.intermediate_values), chance=largest_class_share(data.val_y))
        scores = spec.scores()
        if data.folds:  # K trainings per trial: no resume checkpoints (a retry trains every fold again)
            model, metrics = _cross_validate(trial, config, data, device, report, progress, deadline, scores, stop)
        else:
            checkpoint = trial_checkpoint(trial, trial_id, line, report.resumed)
            model, metrics = fit(config, data, device, report=report, deadline=deadline, scores=scores,
                                 checkpoints=checkpoint, stop=stop)
        _record_metrics(trial, metrics)
        if spec.keep_checkpoints:
            # Before tell(): Optuna records an artifact only on a trial that is still running.
            keep_checkpoint(trial, model)
        values = [metrics.value(objective.metric) for objective in spec.objective_list]
        _record_constraints(trial, spec, metrics.attrs())
        study.tell(trial, values)
        _ended(checkpoint, spec)
        return TrialOutcome(trial.number, TrialState.COMPLETE, values)
    except optuna.TrialPruned as exc:
        _record_training(trial, progress)
        reason = str(exc) or "pruned"
        trial.set_user_attr(FAIL_REASON, "pruned")
        trial.set_user_attr(FAIL_MESSAGE, reason)
        study.tell(trial, state=TrialState.PRUNED)
        _ended(checkpoint, spec)
        return TrialOutcome(trial.number, TrialState.PRUNED, None, reason)
    except TrialFailed as exc:
        _record_training(trial, progress)
        trial.set_user_attr(FAIL_REASON, exc.reason)
        trial.set_user_attr(FAIL_MESSAGE, str(exc))
        log.info("trial %d pruned: %s", trial.number, exc)
        study.tell(trial, state=TrialState.PRUNED)
        _ended(checkpoint, spec)
        return TrialOutcome(trial.number, TrialState.PRUNED, None, f"{exc.reason}: {exc}")
    except (KeyboardInterrupt, WorkerStopped):
        _record_training(trial, progress)
        raise
    except DATABASE_LOST:
        raise  # not the trial's failure: the worker waits for the database and queues the trial again
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the study goes on
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        log.warning("trial %d failed: %s", trial.number, message, exc_info=True)
        _record_training(trial, progress)
        _fail(study, trial, "error", message)
        _ended(checkpoint, spec)  # an error is not retried
        return TrialOutcome(trial.number, TrialState.FAIL, None, message)


def _ended(checkpoint: TrialCheckpoint | None, spec: StudySpec) -> None:
    """The trial has ended for good: its resume checkpoint goes, unless the study keeps checkpoints."""
    if checkpoint is not None and not spec.keep_checkpoints:
        checkpoint.remove()


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, message: str) -> None:
    trial.set_user_attr(FAIL_REASON, reason)
    trial.set_user_attr(FAIL_MESSAGE, message)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


AT_CHANCE_EPOCHS = 3
"""Epochs in a row at or under the largest class's share of val that prune a trial (:class:`_Reporter`)."""


def largest_class_share(labels: torch.Tensor) -> float:
    """The share of ``labels`` in their most common class: the val accuracy of a model that answers it always."""
    return torch.bincount(labels.flatten().long()).max().item() / max(1, labels.numel()) if labels.numel() else 0.0


@dataclass
class _Progress:
    """How far a trial's training got: what a trial that stops early still spent."""

    started: float = field(default_factory=time.perf_counter)
    epochs: int = 0


class _Reporter:
    """Per-epoch report: intermediate value for the dashboard and the pruner; counts ``progress``.

    The pruner is asked after every epoch but the trial's ``last_epoch``: a trial that trained
    every epoch is COMPLETE (and so in ``best``, the ablation and the final evaluation),
    whatever the pruner would say of its last value. With ``prune`` False (a space's start
    point or a warm-start config) it is not asked at all: these are the search's reference
    results, run first, when a pruner would judge them against one or two other trials
    (Optuna's successive halving promotes only the best of the first ``reduction_factor``
    trials at a rung) and cut a good config on the noise of its second epoch. Multi-objective
    trials, which cannot store intermediate values, keep their live curve in user attr
    ``val_accuracy_curve`` instead; so do trials of one objective measured only at the end
    (latency, params, FLOPs: no per-epoch value for the pruner). The value reported is the
    objective's own (val loss, macro-F1, a user's score...), in the study's direction. Besides the
    pruner, a trial no better than answering val's largest class (``chance``) for
    :data:`AT_CHANCE_EPOCHS` epochs is pruned (:meth:`_prune_at_chance`); with ``--cv`` it is
    judged on the first fold, against the largest class's share of the study's val split.

    An epoch is reported once per trial: a trial claimed again skips the epochs it reported
    before, and one resumed from a checkpoint records the checkpoint's epochs it lacks
    (:meth:`resumed`, a retry copy has none) without asking the pruner.
    """

    def __init__(self, trial: optuna.Trial, spec: StudySpec, progress: _Progress, *, prune: bool,
                 last_epoch: int, reported: set[int], chance: float = 0.0) -> None:
        self.trial, self.spec, self.progress = trial, spec, progress
        self.prune, self.last_epoch, self.chance = prune, last_epoch, chance
        self.objective = spec.objective_list[0]
        self.single = len(spec.objectives) == 1 and self.objective.per_epoch
        self.reported = reported
        self.accuracy: list[float] = []  # every epoch's val accuracy: the live curve and the at-chance rule's

    def __call__(self, epoch: int, values: dict[str, float]) -> None:
        self.progress.epochs = epoch
        self.accuracy.append(values["val_accuracy"])
        if not self.single:
            self.trial.set_user_attr(LIVE_CURVE, list(self.accuracy))
        elif epoch not in self.reported:
            value = values[self.objective.metric]
            self.trial.report(value, step=epoch)
            self.reported.add(epoch)
            if self.prune and epoch < self.last_epoch and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {self.spec.pruner} at epoch {epoch} "
                                         f"({self.objective.metric} {value:.4f})")
        self._prune_at_chance(epoch)  # after the report: the pruned trial's curve has the epoch

    def _prune_at_chance(self, epoch: int) -> None:
        """Prune a trial no better than always answering the largest class of val: its val accuracy at
        most that class's share (``chance``) at each of the last :data:`AT_CHANCE_EPOCHS` epochs, before
        its last epoch.

        Hyperband prunes such a trial only against others at the same rung, and a study's first trials
        (or a bracket's) have none: a diverged first trial ran to its end at 0.100 in the mnist5k and
        mnist5k-1k benchmarks (BENCHMARKS.md). Optuna's ThresholdPruner would need the threshold at
        study creation, before the data is loaded, and looks at one epoch: a dead model's accuracy
        stays at a class's share (it may switch between classes), a slow start leaves it within a few
        epochs. Only where the study prunes at all (``--pruner`` not ``none``, one objective measured
        per epoch), and never a start point.
        """
        last = self.accuracy[-AT_CHANCE_EPOCHS:]
        if (not self.prune or not self.single or self.spec.pruner == "none" or epoch >= self.last_epoch
                or len(last) < AT_CHANCE_EPOCHS or max(last) > self.chance + 1e-9):
            return
        raise optuna.TrialPruned(f"pruned at chance at epoch {epoch}: val accuracy at most {max(last):.4f} in each "
                                 f"of the last {AT_CHANCE_EPOCHS} epochs, no better than always answering the "
                                 f"largest class ({self.chance:.4f} of val)")

    def resumed(self, epoch: int, step: int, curves: dict[str, list[float]]) -> None:
        """Training continues after ``epoch`` (``step`` batches into the next); ``curves`` of the epochs done."""
        self.progress.epochs = epoch
        self.accuracy = list(curves["val_accuracy"][:epoch])
        where = f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")
        self.trial.set_user_attr(RESUMED_FROM_EPOCH, epoch)
        self.trial.set_user_attr(RESUME_NOTE, f"resumed from the checkpoint after {where}")
        if not self.single:
            self.trial.set_user_attr(LIVE_CURVE, list(self.accuracy))
            return
        for number, value in enumerate(curves[self.objective.metric][:epoch], 1):
            if number not in self.reported:
                self.trial.report(value, step=number)
                self.reported.add(number)


def _cross_validate(trial: optuna.Trial, config: TrialConfig, data: TrialData, device: torch.device, report,
                    progress: _Progress, deadline: float | None,
                    scores: tuple[Score, ...], stop: Callable[[], None] | None) -> tuple[nn.Module, TrialMetrics]:
    """``--cv K``: train once per fold; the metrics are the first fold's with val accuracy, loss and scores averaged.

    Only the first fold reports to the pruner (``report``): the intermediate values the pruners
    compare are then all the same fold's curve, and a pruned config costs at most one fold. Each
    fold's val accuracy is recorded as it finishes (``fold_val_accuracy``), their spread at the
    end. ``train_seconds`` and ``epochs_run`` add the folds up (the compute the trial spent);
    ``curves`` are the first fold's; latency and throughput are measured on the first fold's
    model only (every fold trains the same architecture). One worker runs all K folds.
    """
    runs: list[TrialMetrics] = []
    for i in range(len(data.folds)):
        fold_report = report if i == 0 else _epoch_counter(progress, progress.epochs)
        model, metrics = fit(config, data.fold(i), device, report=fold_report, measure=i == 0, deadline=deadline,
                             scores=scores, stop=stop)
        runs.append(metrics)
        trial.set_user_attr(FOLD_VAL_ACCURACY, [m.val_accuracy for m in runs])
    accuracies = [m.val_accuracy for m in runs]
    trial.set_user_attr(FOLD_VAL_ACCURACY_STD, statistics.pstdev(accuracies))
    return model, replace(runs[0], val_accuracy=statistics.fmean(accuracies),
                          val_loss=statistics.fmean(m.val_loss for m in runs),
                          best_val_accuracy=statistics.fmean(m.best_val_accuracy for m in runs),
                          scores={key: statistics.fmean(m.scores[key] for m in runs) for key in runs[0].scores},
                          train_seconds=sum(m.train_seconds for m in runs), epochs_run=sum(m.epochs_run for m in runs))


def _epoch_counter(progress: _Progress, done: int):
    """A later fold's report: counts its epochs after the ``done`` of earlier folds; never prunes."""
    def report(epoch: int, values: dict[str, float]) -> None:
        progress.epochs = done + epoch

    return report


def _record_training(trial: optuna.Trial, progress: _Progress | None) -> None:
    """What a trial that stopped early trained: the report's "compute spent" counts it too."""
    if progress is not None:
        trial.set_user_attr(TRAIN_SECONDS, time.perf_counter() - progress.started)
        trial.set_user_attr(EPOCHS_RUN, progress.epochs)


def _record_metrics(trial: optuna.Trial, metrics: TrialMetrics) -> None:
    for key, value in metrics.attrs().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(CURVES, metrics.curves)


def _refuse_before_training(trial: optuna.Trial, spec: StudySpec, config: TrialConfig, data: TrialData,
                            device: torch.device) -> None:
    """Refuse a model over ``--max-params``, or too big for this worker's memory, before it trains.

    Both are measured on a copy built on the meta device (shapes only: no memory, no weights
    read), in milliseconds even for a model far too big to build. A model too big for the
    memory would otherwise train until the allocator fails, ignoring ``--trial-timeout``
    inside one huge step; refused as PRUNED (reason ``memory``), the sampler learns to avoid it.
    """
    shape = config.replace(pretrained=False, weights_path=None)
    if config.pretrained and config.input_size is None and config.model not in ("cnn", "lenet5"):  # lenet5: no weights
        # Without weights the copy would keep the data's size; pretrained, the images are resized to the
        # backbone's native size (224), and the memory must be estimated at that size.
        shape = shape.replace(input_size=native_size(config.model))
    with torch.device("meta"):
        model = build_model(shape, data.input_shape, data.num_classes)
    params = count_params(model)
    trial.set_user_attr(PARAMS, params)
    if spec.max_params is not None and params > spec.max_params:
        trial.set_user_attr(CONSTRAINTS, _constraint_values(spec, {PARAMS: params}))
        raise TrialFailed("constraint", f"{params} parameters exceed --max-params {spec.max_params}")
    available = available_memory(device)
    needed = training_memory(model, config, data, device)
    if available is not None and needed > available:
        raise TrialFailed("memory", f"training needs about {format_bytes(needed)} ({params} parameters, batch "
                                    f"{min(config.batch_size, len(data.train_y))}), {device} has "
                                    f"{format_bytes(available)} available")


def _constraint_values(spec: StudySpec, metrics: dict[str, Any]) -> list[float]:
    """Optuna's constraint convention: one value per constraint, <= 0 means satisfied."""
    out = []
    if spec.max_params is not None:
        out.append(float(metrics.get("params", 0) - spec.max_params))
    if spec.max_latency_ms is not None:
        out.append(float(metrics.get("latency_ms", 0.0) - spec.max_latency_ms))
    return out


def _record_constraints(trial: optuna.Trial, spec: StudySpec, metrics: dict[str, Any]) -> None:
    values = _constraint_values(spec, metrics)
    if values:
        trial.set_user_attr(CONSTRAINTS, values)
