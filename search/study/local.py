"""``cnnsearch run`` as a Python function: create or resume a study and work it with local workers.

One worker runs in this process; ``jobs`` > 1 starts that many worker processes (spawned),
each running :func:`search.study.worker.worker_loop`; with Ray options the workers are Ray
tasks instead (:mod:`search.study.ray_workers`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import TrialState

from search.study.dataset import load_study_data, record_or_check_split
from search.study.errors import WorkerStopped
from search.study.progress import StudyProgress
from search.study.records import INTERRUPTED, TrialOutcome, WorkerSummary, raise_worker_errors
from search.study.samplers import grid_budget
from search.study.signals import stop_on_signals, stop_with_parent
from search.study.spec import StudySpec, create_or_resume, fill_budget, warm_start_params
from search.study.worker import WorkerSettings, worker_loop, worker_summary
from search.trial.data import prepare_data
from search.trial.device import resolve_device
from search.trial.models import space_fit_warning
from storage import open_storage, resolve_storage_url
from storage.heartbeat import fail_and_retry
from storage.records import FAIL_REASON, HOST, PID
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


def cpu_threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """CPU threads for each of ``jobs`` workers sharing ``cores`` (default: this machine's), at least one."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def plan_workers(jobs: int, device: str, *, gpus: int, cores: int | None = None) -> list[tuple[str, int]]:
    """The device and CPU threads of each of ``jobs`` local worker processes.

    With ``gpus`` GPUs (for ``device`` auto or cuda) the workers take them in turn, else they
    all use ``device``; either way they split the ``cores`` (a GPU worker still runs its
    Python, data indexing and augmentation on CPU threads).
    """
    threads = cpu_threads_per_worker(jobs, cores)
    return [(f"cuda:{i % gpus}" if gpus else device, threads) for i in range(jobs)]


def run_study(spec: StudySpec, study_name: str, storage_url: str | None = None, *,
              timeout: float | None = None, jobs: int = 1, device: str = "auto",
              warm_start: str | None = None, progress: bool = True, download: bool = False,
              ray: RayOptions | None = None, started_at: float | None = None,
              on_interrupt: str = "fail") -> RunResult:
    """Create (or resume) study ``study_name`` from ``spec`` and run it with ``jobs`` local workers.

    With ``ray``, the workers are Ray tasks instead (``jobs`` is then ignored; see
    :func:`search.study.ray_workers.run_ray_workers`), all running the same worker loop.

    Everything that can be wrong with the input (storage URL, data, an existing study
    made from something else) is checked before the study is created or changed. The
    budget ``spec.budget`` counts the whole study. ``download`` fetches a torchvision
    dataset into ``spec.data_dir`` first. A stop propagates once every worker has ended its
    running trial: handed back to the study on WorkerStopped (SIGTERM), marked FAIL (reason
    ``interrupted``) and queued again on KeyboardInterrupt, unless ``on_interrupt`` is
    ``requeue`` (what the worker processes do with Ctrl-C; this process's handlers are the caller's).
    ``timeout`` counts from ``started_at`` (a ``time.time()``; the command's start), else from
    this call: loading the data and setting up the study use it too.
    """
    t0 = time.monotonic()
    started_at = time.time() if started_at is None else started_at
    url = resolve_storage_url(storage_url)
    dev = resolve_device(device)
    images, split = load_study_data(spec, download=download)
    storage = open_storage(url)
    study = create_or_resume(storage, study_name, spec)
    record_or_check_split(study, spec, images, split)
    if (misfit := space_fit_warning(spec.space, tuple(images.images.shape[1:]))) is not None:
        log.warning(misfit)  # once here, not in every worker process
    warm = warm_start_params(storage, warm_start, spec.space) if warm_start else None
    added = fill_budget(study, spec, warm)
    log.info("study %r: %d trials enqueued", study_name, added)
    total = grid_budget(spec.space, spec.budget) if spec.sampler == "grid" else spec.budget
    workers: list[WorkerSummary] = []
    with StudyProgress(study, total=total, enabled=progress):
        if ray is not None:
            from search.study.ray_workers import run_ray_workers  # imports Ray only when asked for

            del images
            workers = run_ray_workers(url, study_name, ray, device=device, timeout=timeout,
                                      started_at=started_at, on_interrupt=on_interrupt)
        elif jobs <= 1:
            torch.set_num_threads(cpu_threads_per_worker(1))
            if dev.type == "cuda":
                torch.cuda.set_device(dev)  # pinning the data makes a CUDA context on the current GPU
            data = prepare_data(images, split, dev)
            del images
            settings = WorkerSettings(device=dev, timeout=timeout, started_at=started_at, parallel=False)
            workers.append(worker_loop(url, study_name, settings, data=data))
        else:
            del images  # each worker process maps its own: this one holds none of the data while they train
            workers = _run_processes(url, study_name, jobs, device, (timeout, started_at), storage, study,
                                     on_interrupt)
    raise_worker_errors(workers)
    return RunResult(study_name, url, study_counts(study), time.monotonic() - t0, workers)


def _run_processes(url: str, study_name: str, jobs: int, device: str, timeout: tuple[float | None, float],
                   storage: optuna.storages.BaseStorage, study: optuna.Study,
                   on_interrupt: str) -> list[WorkerSummary]:
    """``jobs`` worker processes on this machine: one GPU each when there are GPUs; the CPU cores split.

    Each process sends its summary through a pipe of its own. A process that ends without
    one (the OOM killer, ``kill -9``, a crash) closes its pipe, which wakes this process at
    once: its running trial is failed and queued again, and the others go on. ``timeout`` is
    the seconds and the ``time.time()`` they count from. A stop of this process is passed on
    to the workers (the same signal), which end their trials as ``on_interrupt`` says.
    """
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch threads and CUDA
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    level = logging.getLogger().getEffectiveLevel()
    procs: list[multiprocessing.process.BaseProcess] = []
    pending: dict[Connection, int] = {}
    for index, (dev, threads) in enumerate(plan_workers(jobs, device, gpus=gpus)):
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_process_main, name=f"cnnsearch-worker-{index}", args=(
            writer, url, study_name, index, dev, threads, timeout, level, os.getpid(), on_interrupt))
        proc.start()
        writer.close()  # the child holds the only write end: its death reads as end-of-file here
        procs.append(proc)
        pending[reader] = index
    out: list[WorkerSummary] = []
    died = 0
    try:
        while pending:
            for reader in wait(list(pending)):
                index = pending.pop(reader)
                try:
                    out.append(reader.recv())
                except EOFError:
                    out.append(_dead_worker(procs[index], storage, study))
                    died += 1
                reader.close()
        for proc in procs:
            proc.join()
        if died == jobs:  # nobody left to run what they left: the run failed
            for summary in out:
                summary.error = f"every worker process died; this one was {summary.stopped_because}"
        return out
    except (KeyboardInterrupt, WorkerStopped) as stop:
        _stop_children(procs, stop.signum if isinstance(stop, WorkerStopped) else signal.SIGINT)
        raise
    finally:
        # A worker that did not end its trial in time (killed after the grace period) is a dead one.
        _fail_running_trials(storage, study, [proc.pid for proc in procs if proc.pid is not None], INTERRUPTED,
                             "its worker process exited mid-trial")


def _process_main(results: Connection, url: str, study_name: str, index: int, device: str,
                  threads: int, timeout: tuple[float | None, float], log_level: int, parent_pid: int,
                  on_interrupt: str) -> None:
    """Entry point of a local ``--jobs`` worker process (spawned; arguments are picklable)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker{index} %(levelname)s %(message)s")
    settings = WorkerSettings(device=device, worker_index=index, threads=threads, timeout=timeout[0],
                              started_at=timeout[1])
    name = f"pid {os.getpid()}"
    with stop_on_signals(on_interrupt):
        try:
            stop_with_parent(parent_pid)  # a worker never works on alone after its run died
            summary = worker_summary(url, study_name, settings, name)
        except (KeyboardInterrupt, WorkerStopped):  # the worker loop ended its trial first
            summary = WorkerSummary.failed(name, INTERRUPTED)
    for signum in (signal.SIGINT, signal.SIGTERM):  # done: a late stop must not cut the summary off
        signal.signal(signum, signal.SIG_IGN)
    try:
        results.send(summary)
    except BrokenPipeError:  # the run is gone: nobody to tell
        pass


def _dead_worker(proc: multiprocessing.process.BaseProcess, storage: optuna.storages.BaseStorage,
                 study: optuna.Study) -> WorkerSummary:
    """The record of a worker process that ended without reporting; its running trial failed and queued again."""
    proc.join()
    code = proc.exitcode or 0
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    host = socket.gethostname()
    name = f"{host}:{proc.pid}"  # as a worker names itself (search.study.objective.worker_identity)
    failed = _fail_running_trials(storage, study, [proc.pid], INTERRUPTED,
                                  f"its worker process (pid {proc.pid}) was {how}")
    during = f"in trial {', '.join(map(str, failed))}, queued again" if failed else "between trials"
    log.warning("worker %s was %s (%s); the other workers go on", name, how, during)
    summary = WorkerSummary(worker=name, stopped_because=f"{how} {during}")
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.user_attrs.get(HOST) == host and t.user_attrs.get(PID) == proc.pid:
            summary.outcomes.append(TrialOutcome(t.number, t.state, t.values, t.user_attrs.get(FAIL_REASON)))
    return summary


def _stop_children(procs: list[multiprocessing.process.BaseProcess], signum: int) -> None:
    """Send ``signum`` to each worker (it ends its running trial), wait for them, kill stragglers."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signum)
    deadline = time.monotonic() + JOIN_GRACE_SECONDS
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _fail_running_trials(storage: optuna.storages.BaseStorage, study: optuna.Study, pids: list[int],
                         reason: str, message: str) -> list[int]:
    """Fail the trials still RUNNING under one of our (now gone) worker processes, queued again; their numbers.

    Each is queued before it is failed (``fail_and_retry``'s ``queue_first``): nobody else ends a
    trial of a worker process of this run before the heartbeat's grace period, and a worker
    looking for work meanwhile must see it running or waiting.
    """
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(HOST) == host and t.user_attrs.get(PID) in pids:
            if fail_and_retry(study, storage, t._trial_id, reason, message, queue_first=True):
                failed.append(t.number)
    return failed
