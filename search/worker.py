"""The worker loop: the one loop every worker runs, however it was started.

Local ``--jobs`` processes, Ray tasks and ``cnnsearch worker`` on another machine all
call :func:`worker_loop` with a storage URL and a study name (picklable handles: each
worker opens its own connections), read the study's spec from the storage, load the data
once onto their device, and claim trials until the budget is spent.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy.exc
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from reports.notes import refresh_study_note
from search.data import Split, TrialData, make_split, prepare_data
from search.datasets import ImageSet, load_dataset
from search.errors import CnnSearchError, StudyError, TooManyFailures, WorkerStopped, user_errors
from search.objective import TrialOutcome, run_trial, worker_identity
from search.samplers import make_pruner, make_sampler
from search.study import StudySpec, claim_waiting_trial, load_spec
from storage import StorageError, mask_url, open_storage
from storage.claims import claim_lock
from storage.heartbeat import Heartbeat, heartbeat_settings

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 2.0

STORAGE_OUTAGE_SECONDS = 600.0
"""How long a worker keeps retrying a database that went away before it gives up."""

STORAGE_LOST = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.InterfaceError)
"""What a database call raises when the server is down or the connection broke."""


@dataclass
class WorkerSummary:
    """What one worker did."""

    worker: str
    device: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    stopped_because: str = "budget spent"

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.state.name] = out.get(o.state.name, 0) + 1
        return out


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


def record_or_check_split(study: optuna.Study, spec: StudySpec, images: ImageSet, split: Split) -> None:
    """Record the split on a new study; refuse a worker whose copy of the data splits differently.

    Results from differently split data would not compare, so such a worker must not join.
    """
    recorded = study.user_attrs.get("split_fingerprint")
    if recorded is None:
        study.set_user_attr("split_fingerprint", split.fingerprint())
        study.set_user_attr("split_sizes", split.describe())
        study.set_user_attr("classes", images.classes)
        study.set_user_attr("input_shape", list(images.images.shape[1:]))
    elif recorded != split.fingerprint():
        raise StudyError(f"dataset {spec.dataset!r} here splits differently from study {study.study_name!r} "
                         f"(fingerprint {split.fingerprint()}, study has {recorded}): the data files differ")


def load_study_data(spec: StudySpec, data_dir: str | None = None, download: bool = False) -> tuple[ImageSet, Split]:
    """Load the study's dataset and split it as the study records."""
    images = load_dataset(spec.dataset, data_dir=data_dir or spec.data_dir, download=download,
                          image_size=spec.image_size)
    return images, make_split(images.labels, **spec.split_args())


def worker_loop(storage_url: str, study_name: str, *, device: str | torch.device = "auto",
                worker_index: int = 0, threads: int | None = None, max_trials: int | None = None,
                timeout: float | None = None, data_dir: str | None = None, parallel: bool = True,
                on_trial: Callable[[TrialOutcome], None] | None = None,
                worker_name: str | None = None, data: TrialData | None = None,
                worker_attrs: dict[str, Any] | None = None) -> WorkerSummary:
    """Run trials of study ``study_name`` until its budget is spent; return what was done.

    Stops when no trial is waiting and none is running anywhere (a running trial whose
    worker died is failed after the heartbeat grace period and its retry is picked up
    here), after ``max_trials`` trials of this worker, after ``timeout`` seconds (no new
    trial starts later; the running one finishes), or after the study's ``max_failures``
    failed trials in a row (:class:`TooManyFailures`). A study without a budget makes
    this worker create trials until a limit or a signal stops it. ``data`` skips loading
    when the caller already holds the study's data on ``device``. ``worker_attrs`` are
    recorded on each of its trials besides host, pid and device (a Ray worker's GPU ids).
    """
    started = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    # Optuna wraps an RDBStorage in its trial cache inside every Study; claiming trials through
    # that same wrapper keeps the cache coherent (a trial claimed on the bare storage is unknown
    # to the Study's cache). get_storage is how Optuna itself builds that wrapper.
    storage = optuna.storages.get_storage(open_storage(storage_url, **heartbeat_settings()))
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        raise StudyError(f"no study named {study_name!r} in this storage; create it with `cnnsearch run`") \
            from None
    spec = load_spec(optuna.load_study(study_name=study_name, storage=storage))
    sampler_seed = None if spec.seed is None else spec.seed + 7919 * worker_index
    study = optuna.load_study(
        study_name=study_name, storage=storage,
        sampler=make_sampler(spec.sampler, sampler_seed, n_objectives=len(spec.objectives),
                             parallel=parallel, constraints=bool(spec.max_params or spec.max_latency_ms),
                             n_params=len(spec.space.params)),
        pruner=make_pruner(spec.pruner, spec.max_epochs, len(spec.objectives)),
    )
    dev = resolve_device(device, worker_index)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # AMP, cudnn and new tensors follow the current device
    identity = {**worker_identity(dev, worker_name), **(worker_attrs or {})}
    if data is None:
        images, split = load_study_data(spec, data_dir)
        record_or_check_split(study, spec, images, split)
        data = prepare_data(images, split, dev)
    summary = WorkerSummary(worker=identity["worker"], device=str(dev))
    failures_in_a_row = 0
    outage = _Outage(mask_url(storage_url))
    log.info("worker %s joined study %r on %s", identity["worker"], study_name, dev)
    while True:
        if max_trials is not None and len(summary.outcomes) >= max_trials:
            summary.stopped_because = f"ran its {max_trials} trials"
            break
        if timeout is not None and time.monotonic() - started > timeout:
            summary.stopped_because = f"timeout of {timeout:g} s"
            break
        trial_id = None
        try:
            trial_id = _next_trial(study, storage, study_id, spec, storage_url)
            if trial_id is None:
                if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    break
                time.sleep(IDLE_POLL_SECONDS)  # others are running: wait to pick up a retry if one dies
                continue
            with Heartbeat(storage, trial_id):
                outcome = run_trial(study, trial_id, spec, data, dev, identity)
            lost = _lost_to_storage(outcome)
            if lost:
                _queue_retry(study, storage, trial_id)
        except STORAGE_LOST as exc:
            # The database went away (a restart, a network cut). A trial it broke mid-way stays
            # RUNNING without heartbeats: once the database is back, the next fail_stale_trials
            # (here or in another worker) fails it and queues its retry.
            outage.wait(exc)
            continue
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker ended this trial first: it saw no heartbeat for the grace period (this
            # worker stalled, or lost the database that long) and failed it, queueing its retry; or,
            # on SQLite, it claimed the same waiting trial at the same moment and finished it.
            log.warning("trial id %s was ended by another worker meanwhile; going on", trial_id)
            continue
        outage.reset()
        if outcome.state == TrialState.COMPLETE:
            refresh_study_note(study, outcome.number)  # the dashboard's note: best config so far; never raises
        summary.outcomes.append(outcome)
        if on_trial is not None:
            on_trial(outcome)
        if not lost:  # the database's failure, not the trial's
            failures_in_a_row = failures_in_a_row + 1 if outcome.state == TrialState.FAIL else 0
        if failures_in_a_row >= spec.max_failures:
            raise TooManyFailures(f"study {study_name!r} stopped: {failures_in_a_row} trials failed in a row "
                                  f"(--max-failures {spec.max_failures}); last reason: {outcome.reason}")
    log.info("worker %s done: %s (%s)", identity["worker"], summary.counts, summary.stopped_because)
    return summary


def _next_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, study_id: int,
                spec: StudySpec, storage_url: str) -> int | None:
    """Fail the trials of dead workers (queueing their retries), then claim a waiting trial.

    Without a budget a new trial is made when none waits; None means nothing to claim.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)  # experimental since Optuna 2.9 and unchanged since
    with claim_lock(storage_url):
        trial_id = claim_waiting_trial(storage, study_id)
    if trial_id is None and spec.budget is None and spec.sampler != "grid":
        trial_id = storage.create_new_trial(study_id)
    return trial_id


def _lost_to_storage(outcome: TrialOutcome) -> bool:
    """Whether a trial failed because a database call failed (run_trial records it as an error)."""
    names = {error.__name__ for error in STORAGE_LOST}
    return outcome.state == TrialState.FAIL and (outcome.reason or "").split(":", 1)[0] in names


def _queue_retry(study: optuna.Study, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Queue a trial the database broke again, as Optuna's retry callback does for a dead worker's.

    The retry links the failed trial (system attr ``failed_trial``) and does not count against
    the budget; without heartbeats (no retry callback) the trial stays failed.
    """
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback
    retry = callback()
    if retry is None:
        return
    failed = copy.deepcopy(storage.get_trial(trial_id))
    # The retry inherits the user attrs; the failure reason belongs to the failed attempt only.
    failed.user_attrs = {k: v for k, v in failed.user_attrs.items() if k not in ("fail_reason", "fail_message")}
    retry(study, failed)
    log.warning("trial %d failed because the database went away; queued again", failed.number)


class _Outage:
    """Waiting for an unreachable database: 1, 2, 4 ... 30 s between tries, for STORAGE_OUTAGE_SECONDS at most."""

    def __init__(self, shown_url: str) -> None:
        self._shown_url = shown_url
        self._since: float | None = None
        self._attempt = 0

    def wait(self, error: Exception) -> None:
        """Sleep before the next try, or raise StorageError when the database has been gone too long."""
        now = time.monotonic()
        self._since = now if self._since is None else self._since
        cause = getattr(error.__cause__, "orig", None) or error.__cause__ or error
        reason = " ".join(str(cause).split()) or type(cause).__name__
        if now - self._since > STORAGE_OUTAGE_SECONDS:
            raise StorageError(f"storage {self._shown_url} unreachable for {now - self._since:.0f} s "
                               f"(last error: {reason})") from error
        delay = min(30.0, 2.0 ** self._attempt) * random.uniform(0.75, 1.25)  # jitter: workers do not retry in step
        self._attempt += 1
        log.warning("storage %s: %s; trying again in %.1f s", self._shown_url, reason, delay)
        time.sleep(delay)

    def reset(self) -> None:
        self._since = None
        self._attempt = 0


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`WorkerStopped`, so the running trial is marked FAIL first."""

    def handler(signum: int, frame: object) -> None:
        raise WorkerStopped(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


def process_worker(storage_url: str, study_name: str, worker_index: int, device: str, threads: int | None,
                   timeout: float | None, data_dir: str | None, log_level: int) -> dict:
    """Entry point of a local ``--jobs`` worker process (spawned; arguments are picklable)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker{worker_index} %(levelname)s %(message)s")
    stop_on_sigterm()
    try:
        summary = worker_loop(storage_url, study_name, device=device, worker_index=worker_index,
                              threads=threads, timeout=timeout, data_dir=data_dir)
    except (KeyboardInterrupt, WorkerStopped):
        return {"worker": f"pid {os.getpid()}", "error": "interrupted"}
    except TooManyFailures as exc:
        return {"worker": f"pid {os.getpid()}", "error": str(exc), "too_many_failures": True}
    except user_errors() as exc:
        return {"worker": f"pid {os.getpid()}", "error": str(exc)}
    return {"worker": summary.worker, "counts": summary.counts, "stopped": summary.stopped_because}
