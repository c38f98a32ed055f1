"""``cnnsearch run`` as a Python function: create or resume a study and work it with local workers.

One worker runs in this process; ``jobs`` > 1 starts that many worker processes (spawned),
each running :func:`search.study.worker.worker_loop`; with Ray options the workers are Ray
tasks instead (:mod:`search.study.ray_workers`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import TrialState

from search.study.dataset import load_study_data, record_or_check_split
from search.study.errors import WorkerStopped
from search.study.progress import StudyProgress
from search.study.records import INTERRUPTED, WorkerSummary, raise_worker_errors
from search.study.samplers import grid_budget
from search.study.signals import stop_on_sigterm
from search.study.spec import StudySpec, create_or_resume, fill_budget, warm_start_params
from search.study.worker import WorkerSettings, worker_loop, worker_summary
from search.trial.data import prepare_data
from search.trial.device import resolve_device
from storage import open_storage, resolve_storage_url
from storage.records import FAIL_MESSAGE, FAIL_REASON, HOST, PID
from storage.studies import study_counts

if TYPE_CHECKING:
    from search.study.ray_workers import RayOptions

log = logging.getLogger(__name__)

JOIN_GRACE_SECONDS = 30.0


@dataclass
class RunResult:
    """What a run left in the study."""

    study_name: str
    storage_url: str
    counts: dict[str, int]
    wall_seconds: float
    workers: list[WorkerSummary] = field(default_factory=list)


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
    :func:`search.study.ray_workers.run_ray_workers`), all running the same worker loop.

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
    total = grid_budget(spec.space, spec.budget) if spec.sampler == "grid" else spec.budget
    workers: list[WorkerSummary] = []
    with StudyProgress(study, total=total, enabled=progress):
        if ray is not None:
            from search.study.ray_workers import run_ray_workers  # imports Ray only when asked for

            del images
            workers = run_ray_workers(url, study_name, ray, device=device, timeout=timeout)
        elif jobs <= 1:
            torch.set_num_threads(cpu_threads_per_worker(1))
            data = prepare_data(images, split, dev)
            del images
            settings = WorkerSettings(device=dev, timeout=timeout, parallel=False)
            workers.append(worker_loop(url, study_name, settings, data=data))
        else:
            workers = _run_processes(url, study_name, jobs, device, timeout, storage, study)
    raise_worker_errors(workers)
    return RunResult(study_name, url, study_counts(study), time.monotonic() - t0, workers)


def _run_processes(url: str, study_name: str, jobs: int, device: str, timeout: float | None,
                   storage: optuna.storages.BaseStorage, study: optuna.Study) -> list[WorkerSummary]:
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


def _process_main(results: multiprocessing.Queue, url: str, study_name: str, index: int, device: str,
                  threads: int | None, timeout: float | None, log_level: int) -> None:
    """Entry point of a local ``--jobs`` worker process (spawned; arguments are picklable)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker{index} %(levelname)s %(message)s")
    settings = WorkerSettings(device=device, worker_index=index, threads=threads, timeout=timeout)
    name = f"pid {os.getpid()}"
    with stop_on_sigterm():
        try:
            summary = worker_summary(url, study_name, settings, name)
        except (KeyboardInterrupt, WorkerStopped):
            summary = WorkerSummary.failed(name, INTERRUPTED)
    results.put(summary)


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
        if t.user_attrs.get(HOST) == host and t.user_attrs.get(PID) in pids:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, FAIL_REASON, INTERRUPTED)
            storage.set_trial_user_attr(trial_id, FAIL_MESSAGE, "its worker process exited mid-trial")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
