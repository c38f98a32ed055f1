"""``cnnsearch run`` as a Python function: create or resume a study and work it with local workers."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from search.data import prepare_data
from search.errors import CnnSearchError, TooManyFailures, WorkerStopped
from search.progress import StudyProgress, study_counts
from search.study import StudySpec, create_or_resume, fill_budget, warm_start_params
from search.worker import load_study_data, process_worker, record_or_check_split, resolve_device, worker_loop
from storage import open_storage, resolve_storage_url

if TYPE_CHECKING:
    from search.ray_backend import RayOptions

log = logging.getLogger(__name__)

JOIN_GRACE_SECONDS = 30.0


@dataclass
class RunResult:
    """What a run left in the study."""

    study_name: str
    storage_url: str
    counts: dict[str, int]
    wall_seconds: float
    workers: list[dict[str, Any]] = field(default_factory=list)


def cpu_threads_per_worker(jobs: int) -> int:
    """CPU threads for each of ``jobs`` workers sharing this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def run_study(spec: StudySpec, study_name: str, storage_url: str | None = None, *,
              timeout: float | None = None, jobs: int = 1, device: str = "auto",
              warm_start: str | None = None, progress: bool = True, download: bool = False,
              ray: RayOptions | None = None) -> RunResult:
    """Create (or resume) study ``study_name`` from ``spec`` and run it with ``jobs`` local workers.

    With ``ray``, the workers are Ray tasks instead (``jobs`` is then ignored; see
    :func:`search.ray_backend.run_ray_workers`), all running the same worker loop.

    Everything that can be wrong with the input (storage URL, data, an existing study
    made from something else) is checked before the study is created or changed. The
    budget ``spec.budget`` counts the whole study. ``download`` fetches a torchvision
    dataset into ``spec.data_dir`` first. On KeyboardInterrupt every worker's
    running trial is marked FAIL (reason ``interrupted``) before the interrupt propagates.
    """
    t0 = time.monotonic()
    url = resolve_storage_url(storage_url)
    dev = resolve_device(device)
    images, split = load_study_data(spec, download=download)
    storage = open_storage(url)
    study = create_or_resume(storage, study_name, spec)
    record_or_check_split(study, spec, images, split)
    warm = warm_start_params(storage, warm_start, spec.space) if warm_start else None
    added = fill_budget(study, spec, warm)
    log.info("study %r: %d trials enqueued", study_name, added)
    total = spec.budget if spec.sampler != "grid" or spec.budget else len(study.get_trials(deepcopy=False))
    workers: list[dict[str, Any]] = []
    with StudyProgress(study, total=total, enabled=progress):
        if ray is not None:
            from search.ray_backend import run_ray_workers  # imports Ray only when asked for

            del images
            workers = run_ray_workers(url, study_name, ray, device=device, timeout=timeout)
        elif jobs <= 1:
            torch.set_num_threads(cpu_threads_per_worker(1))
            data = prepare_data(images, split, dev)
            del images
            summary = worker_loop(url, study_name, device=dev, timeout=timeout, data=data, parallel=False)
            workers.append({"worker": summary.worker, "counts": summary.counts,
                            "stopped": summary.stopped_because})
        else:
            workers = _run_processes(url, study_name, jobs, device, timeout, storage, study)
    _raise_worker_errors(workers)
    return RunResult(study_name, url, study_counts(study), time.monotonic() - t0, workers)


def _raise_worker_errors(workers: list[dict[str, Any]]) -> None:
    """A worker process that stopped on an error stops the run with that error (exit 1 or 2 in the CLI)."""
    for w in workers:
        if w.get("too_many_failures"):
            raise TooManyFailures(w["error"])
    for w in workers:
        if w.get("error") and w["error"] != "interrupted":
            raise CnnSearchError(f"worker {w['worker']}: {w['error']}")


def _run_processes(url: str, study_name: str, jobs: int, device: str, timeout: float | None,
                   storage: optuna.storages.BaseStorage, study: optuna.Study) -> list[dict[str, Any]]:
    """``jobs`` worker processes on this machine: one GPU each when there are GPUs, else CPU threads split."""
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch threads and CUDA
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    threads = None if gpus else cpu_threads_per_worker(jobs)
    level = logging.getLogger().getEffectiveLevel()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, name=f"cnnsearch-worker-{i}", args=(
            results, url, study_name, i, f"cuda:{i % gpus}" if gpus else device, threads, timeout, level))
        for i in range(jobs)
    ]
    for proc in procs:
        proc.start()
    pids = [proc.pid for proc in procs]
    try:
        out = [results.get() for _ in procs]
        for proc in procs:
            proc.join()
        return out
    except (KeyboardInterrupt, WorkerStopped):
        _stop_children(procs)
        raise
    finally:
        _fail_orphans(storage, study, pids)


def _process_main(results: Any, *args: Any) -> None:
    url, study_name, index, device, threads, timeout, level = args
    results.put(process_worker(url, study_name, index, device, threads, timeout, None, level))


def _stop_children(procs: list[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM each worker (its running trial is marked FAIL), wait for them, kill stragglers."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + JOIN_GRACE_SECONDS
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _fail_orphans(storage: optuna.storages.BaseStorage, study: optuna.Study, pids: list[int]) -> None:
    """Fail any trial still RUNNING under one of our (now gone) worker processes."""
    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == host and t.user_attrs.get("pid") in pids:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted")
            storage.set_trial_user_attr(trial_id, "fail_message", "its worker process exited mid-trial")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
