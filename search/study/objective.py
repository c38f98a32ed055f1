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
import time
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from search.study.checkpoints import keep_checkpoint
from search.study.errors import WorkerStopped
from search.study.records import INTERRUPTED, TrialOutcome
from search.study.spec import METRIC_OF, StudySpec
from search.trial.data import TrialData
from search.trial.errors import TrialFailed
from search.trial.measure import count_params
from search.trial.metrics import TrialMetrics
from search.trial.models import build_model
from search.trial.train import fit
from spaces.schema import TrialConfig
from storage.engine import DATABASE_LOST
from storage.records import (
    CONFIG,
    CONSTRAINTS,
    CURVES,
    DEVICE,
    FAIL_MESSAGE,
    FAIL_REASON,
    HOST,
    LIVE_CURVE,
    ORIGIN,
    PARAMS,
    PID,
    SEED,
    STARTED,
    THREADS,
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
              device: torch.device, identity: dict[str, Any]) -> TrialOutcome:
    """Run the claimed (RUNNING) trial ``trial_id`` and tell the study its outcome.

    Pruned trials (by the pruner, or for NaN loss, out-of-memory or timeout, so the
    sampler learns to avoid them) end PRUNED with ``fail_reason``; any other error ends
    FAIL with its reason and the worker goes on. KeyboardInterrupt and WorkerStopped
    end the trial FAIL with reason ``interrupted`` and propagate.
    """
    trial = optuna.Trial(study, trial_id)
    origin = trial.user_attrs.get(ORIGIN)  # "start" / "warm_start" when fill_budget enqueued a known config
    for key, value in identity.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(STARTED, time.time())
    try:
        config = TrialConfig.from_dict(spec.space.suggest(trial), where=spec.space.source)
        if "seed" not in spec.space.params and "seed" not in spec.space.fixed:
            # A distinct, reproducible seed per trial: the recipe records it.
            config = config.replace(seed=spec.seed * 100_000 + trial.number)
        trial.set_user_attr(CONFIG, config.to_dict())
        trial.set_user_attr(SEED, config.seed)
        # Until measured, a trial counts as feasible: the samplers need one value per constraint.
        _record_constraints(trial, spec, {})
        _check_params_constraint(trial, spec, config, data)
        deadline = time.monotonic() + spec.trial_timeout if spec.trial_timeout else None
        report = _reporter(trial, spec, prune=origin is None)
        model, metrics = fit(config, data, device, report=report, deadline=deadline)
        _record_metrics(trial, metrics)
        if spec.keep_checkpoints:
            # Before tell(): Optuna records an artifact only on a trial that is still running.
            keep_checkpoint(trial, model)
        values = [float(getattr(metrics, METRIC_OF[name])) for name in spec.objectives]
        _record_constraints(trial, spec, metrics.attrs())
        study.tell(trial, values)
        return TrialOutcome(trial.number, TrialState.COMPLETE, values)
    except optuna.TrialPruned as exc:
        reason = str(exc) or "pruned"
        trial.set_user_attr(FAIL_REASON, "pruned")
        trial.set_user_attr(FAIL_MESSAGE, reason)
        study.tell(trial, state=TrialState.PRUNED)
        return TrialOutcome(trial.number, TrialState.PRUNED, None, reason)
    except TrialFailed as exc:
        trial.set_user_attr(FAIL_REASON, exc.reason)
        trial.set_user_attr(FAIL_MESSAGE, str(exc))
        log.info("trial %d pruned: %s", trial.number, exc)
        study.tell(trial, state=TrialState.PRUNED)
        return TrialOutcome(trial.number, TrialState.PRUNED, None, f"{exc.reason}: {exc}")
    except (KeyboardInterrupt, WorkerStopped) as exc:
        _fail(study, trial, INTERRUPTED, f"worker stopped by {type(exc).__name__}")
        raise
    except DATABASE_LOST:
        raise  # not the trial's failure: the worker waits for the database and queues the trial again
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the study goes on
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        log.warning("trial %d failed: %s", trial.number, message, exc_info=True)
        _fail(study, trial, "error", message)
        return TrialOutcome(trial.number, TrialState.FAIL, None, message)


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, message: str) -> None:
    trial.set_user_attr(FAIL_REASON, reason)
    trial.set_user_attr(FAIL_MESSAGE, message)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def _reporter(trial: optuna.Trial, spec: StudySpec, prune: bool = True):
    """Per-epoch report: intermediate value for the dashboard and the pruner.

    With ``prune`` False (a space's start point or a warm-start config) the pruner is not
    asked: these are the search's reference results, run first, when a pruner would judge
    them against one or two other trials (Optuna's successive halving promotes only the best
    of the first ``reduction_factor`` trials at a rung) and cut a good config on the noise
    of its second epoch. Multi-objective trials, which cannot store intermediate values,
    keep their live curve in user attr ``val_accuracy_curve`` instead.
    """
    curve: list[float] = []
    single = len(spec.objectives) == 1

    def report(epoch: int, val_accuracy: float, val_loss: float) -> None:
        if not single:
            curve.append(val_accuracy)
            trial.set_user_attr(LIVE_CURVE, list(curve))
        else:
            trial.report(val_accuracy, step=epoch)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"pruned by {spec.pruner} at epoch {epoch} "
                                         f"(val_accuracy {val_accuracy:.4f})")

    return report


def _record_metrics(trial: optuna.Trial, metrics: TrialMetrics) -> None:
    for key, value in metrics.attrs().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(CURVES, metrics.curves)


def _check_params_constraint(trial: optuna.Trial, spec: StudySpec, config: TrialConfig,
                             data: TrialData) -> None:
    """Refuse a model over ``--max-params`` before spending any training on it."""
    if spec.max_params is None:
        return
    params = count_params(build_model(config, data.input_shape, data.num_classes))
    trial.set_user_attr(PARAMS, params)
    if params > spec.max_params:
        trial.set_user_attr(CONSTRAINTS, _constraint_values(spec, {PARAMS: params}))
        raise TrialFailed("constraint", f"{params} parameters exceed --max-params {spec.max_params}")


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
