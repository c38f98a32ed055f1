"""The worker loop: the one loop every worker runs, however it was started.

Local ``--jobs`` processes, Ray tasks and ``cnnsearch worker`` on another machine all
call :func:`worker_loop` with a storage URL and a study name (picklable handles: each
worker opens its own connections), read the study's spec from the storage, load the data
once onto their device, and claim trials until the budget is spent.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from search.data import Split, TrialData, make_split, prepare_data
from search.datasets import ImageSet, load_dataset
from search.errors import CnnSearchError, StudyError, TooManyFailures, WorkerStopped, user_errors
from search.objective import TrialOutcome, run_trial, worker_identity
from search.samplers import make_pruner, make_sampler
from search.study import StudySpec, claim_waiting_trial, load_spec
from storage import open_storage
from storage.heartbeat import Heartbeat

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 2.0


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
                worker_name: str | None = None, data: TrialData | None = None) -> WorkerSummary:
    """Run trials of study ``study_name`` until its budget is spent; return what was done.

    Stops when no trial is waiting and none is running anywhere (a running trial whose
    worker died is failed after the heartbeat grace period and its retry is picked up
    here), after ``max_trials`` trials of this worker, after ``timeout`` seconds (no new
    trial starts later; the running one finishes), or after the study's ``max_failures``
    failed trials in a row (:class:`TooManyFailures`). A study without a budget makes
    this worker create trials until a limit or a signal stops it. ``data`` skips loading
    when the caller already holds the study's data on ``device``.
    """
    started = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    # Optuna wraps an RDBStorage in its trial cache inside every Study; claiming trials through
    # that same wrapper keeps the cache coherent (a trial claimed on the bare storage is unknown
    # to the Study's cache). get_storage is how Optuna itself builds that wrapper.
    storage = optuna.storages.get_storage(open_storage(storage_url))
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
                             parallel=parallel, constraints=bool(spec.max_params or spec.max_latency_ms)),
        pruner=make_pruner(spec.pruner, spec.max_epochs, len(spec.objectives)),
    )
    dev = resolve_device(device, worker_index)
    identity = worker_identity(dev, worker_name)
    if data is None:
        images, split = load_study_data(spec, data_dir)
        record_or_check_split(study, spec, images, split)
        data = prepare_data(images, split, dev)
    summary = WorkerSummary(worker=identity["worker"], device=str(dev))
    failures_in_a_row = 0
    log.info("worker %s joined study %r on %s", identity["worker"], study_name, dev)
    while True:
        if max_trials is not None and len(summary.outcomes) >= max_trials:
            summary.stopped_because = f"ran its {max_trials} trials"
            break
        if timeout is not None and time.monotonic() - started > timeout:
            summary.stopped_because = f"timeout of {timeout:g} s"
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)  # experimental since Optuna 2.9 and unchanged since
        trial_id = claim_waiting_trial(storage, study_id)
        if trial_id is None and spec.budget is None and spec.sampler != "grid":
            trial_id = storage.create_new_trial(study_id)
        if trial_id is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            time.sleep(IDLE_POLL_SECONDS)  # others are running: wait to pick up a retry if one dies
            continue
        with Heartbeat(storage, trial_id):
            outcome = run_trial(study, trial_id, spec, data, dev, identity)
        summary.outcomes.append(outcome)
        if on_trial is not None:
            on_trial(outcome)
        failures_in_a_row = failures_in_a_row + 1 if outcome.state == TrialState.FAIL else 0
        if failures_in_a_row >= spec.max_failures:
            raise TooManyFailures(f"study {study_name!r} stopped: {failures_in_a_row} trials failed in a row "
                                  f"(--max-failures {spec.max_failures}); last reason: {outcome.reason}")
    log.info("worker %s done: %s (%s)", identity["worker"], summary.counts, summary.stopped_because)
    return summary


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
    except user_errors() as exc:
        return {"worker": f"pid {os.getpid()}", "error": str(exc)}
    return {"worker": summary.worker, "counts": summary.counts, "stopped": summary.stopped_because}
