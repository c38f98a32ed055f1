"""Ray workers: N Ray tasks, each running the one worker loop on the GPU(s) Ray assigned it.

Ray only places and starts workers. It does not search: no Ray Tune, no ``OptunaSearch``
(which records ASHA-stopped trials as COMPLETE and drops the last epoch). Each task opens its
own connections from the storage URL and claims trials from the study like every other worker,
so the Optuna study in SQL storage stays the single source of truth, live, and Ray tasks,
local ``--jobs`` processes and ``cnnsearch worker`` started by hand can share one study.

A task trains on the first GPU Ray gave it (Ray sets ``CUDA_VISIBLE_DEVICES``), or on the CPU
when there is none: a CPU-only cluster works with ``gpus_per_trial=0``, and logical GPUs
declared on a CPU machine (``ray.init(num_gpus=2)``) are placed and recorded like real ones.
Every trial records the Ray GPU ids (user attr ``gpu_ids``) besides host, pid and device.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from search.study.errors import StudyError, WorkerStopped
from search.study.ray_cluster import LocalCluster, local_only
from search.study.records import INTERRUPTED, WorkerSummary
from search.study.signals import stop_on_signals, stops_held
from search.trial.datasets import MAX_IMAGE_PIXELS_ENV
from search.trial.errors import CnnSearchError
from storage.heartbeat import GRACE_ENV, INTERVAL_ENV
from storage.records import BACKEND, CUDA_VISIBLE_DEVICES, GPU_IDS, RAY_NODE

log = logging.getLogger(__name__)

CANCEL_GRACE_SECONDS = 30.0
"""How long an interrupted run waits for its Ray tasks to end their running trials."""

WAIT_POLL_SECONDS = 1.0
"""How long a stop of the run may wait for the end of one wait for its Ray tasks."""

ORDER_TIMEOUT_SECONDS = 10.0
"""How long a cancelled Ray task waits for its run to say whether to hand its trial back."""

WEIGHTS_ENV = ("CNNSEARCH_DOWNLOAD_WEIGHTS", "TORCH_HOME")
"""``--download-weights`` and the torch hub folder pretrained weights are read from (search.trial.backbones;
named here, not imported, to keep torch out of the driver)."""

FORWARDED_ENV = (INTERVAL_ENV, GRACE_ENV, MAX_IMAGE_PIXELS_ENV, *WEIGHTS_ENV)
"""Settings of this run that its Ray tasks get even on nodes started elsewhere."""


@dataclass(frozen=True)
class RayOptions:
    """How many Ray workers, with what resources each, on which cluster.

    ``gpus_per_trial`` None means 1 when the cluster has GPUs, else 0; a fraction (0.5) puts
    several workers on one GPU; above 1 it must be whole. ``address`` None starts a local
    cluster for this run (shut down at its end); ``auto`` or ``HOST:PORT`` joins a running one.
    """

    workers: int = 1
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise CnnSearchError(f"--workers must be at least 1, got {self.workers}")
        gpus = self.gpus_per_trial
        if gpus is not None and (gpus < 0 or (gpus > 1 and not float(gpus).is_integer())):
            raise CnnSearchError(f"--gpus-per-trial {gpus:g} is not a GPU share; use 0 (CPU), a fraction up to 1 "
                                 "(0.5: two workers per GPU) or a whole number")
        if self.cpus_per_trial <= 0:
            raise CnnSearchError(f"--cpus-per-trial must be more than 0, got {self.cpus_per_trial:g}")


def run_ray_workers(storage_url: str, study_name: str, options: RayOptions, *, device: str = "auto",
                    timeout: float | None = None, max_trials: int | None = None,
                    data_dir: str | None = None, started_at: float | None = None,
                    on_interrupt: str = "fail") -> list[WorkerSummary]:
    """Run ``options.workers`` Ray tasks on study ``study_name`` until its budget is spent.

    ``device`` is ``auto`` (the task's GPU, else CPU) or ``cpu``; ``timeout`` and
    ``max_trials`` apply to each worker (the timeout counted from ``started_at``, a
    ``time.time()``, when given). Uses the Ray connection this process already has,
    else connects to ``options.address``, else starts a local cluster and shuts it down at
    the end (it listens on the loopback address only, and ends with this process however this
    process ends: :mod:`search.study.ray_cluster`). Returns one summary per worker (with its
    Ray GPU ids), or the error that stopped it. Stopped, this process cancels the tasks (Ray
    raises KeyboardInterrupt in them) and they end their running trials as it was stopped:
    handed back to the study on WorkerStopped (SIGTERM; Ctrl-C with ``on_interrupt``
    ``requeue``), else marked FAIL (reason ``interrupted``) and queued again.

    Raises:
        CnnSearchError: a bad ``device``, or a cluster on which a worker cannot be placed.
        StudyError: no study ``study_name`` in the storage (checked before Ray starts).
    """
    if device not in ("auto", "cpu"):
        raise CnnSearchError(f"--device {device!r} with --backend ray: Ray assigns the GPUs; use auto or cpu")
    _check_study_exists(storage_url, study_name)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.address is None:
        local_only()  # before Ray is imported: it reads the setting once
    import ray

    cluster = _connect(ray, options)
    try:
        gpus = _gpus_per_trial(ray, options)
        level = logging.getLogger().getEffectiveLevel()
        env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
        task = ray.remote(_ray_worker).options(num_cpus=options.cpus_per_trial, num_gpus=gpus,
                                               runtime_env={"env_vars": env} if env else None)
        threads = max(1, int(options.cpus_per_trial))
        order = ray.remote(num_cpus=0)(StopOrder).remote(requeue=on_interrupt == "requeue")
        refs = [task.remote(storage_url, study_name, index, device, threads, (timeout, started_at), max_trials,
                            data_dir, level, order)
                for index in range(options.workers)]
        log.info("started %d Ray workers (%g GPU, %g CPU each) on study %r", len(refs), gpus,
                 options.cpus_per_trial, study_name)
        # ray.init put its own SIGTERM handling (exit, or abort, at once) in place of the run's: the run's is back
        # while the workers run, so that a stopped run tells them how to end their trials.
        with stop_on_signals(on_interrupt):
            return _gather(ray, refs, order)
    finally:
        if cluster is not None:
            cluster.shutdown()


def _check_study_exists(storage_url: str, study_name: str) -> None:
    from storage import open_storage

    storage = open_storage(storage_url, heartbeat_interval=None, existing=True)
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        raise StudyError(f"no study named {study_name!r} in this storage; create it with `cnnsearch run`") from None


def _connect(ray: Any, options: RayOptions) -> LocalCluster | None:
    """Connect to Ray as ``options`` says; return the local cluster this call started, if it did."""
    if ray.is_initialized():
        return None
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": False}
    if options.address:
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CnnSearchError(f"--ray-address {options.address!r}: cannot connect to a Ray cluster there "
                                 f"({' '.join(str(exc).split())[:200]}); start one with `ray start --head` or "
                                 "leave --ray-address out for a local cluster") from None
        return None
    cores = os.cpu_count() or 1
    # Declared like --jobs: every worker asked for runs at once, even on fewer cores than workers.
    return LocalCluster(ray, num_cpus=max(cores, math.ceil(options.workers * options.cpus_per_trial)), **quiet)


def _gpus_per_trial(ray: Any, options: RayOptions) -> float:
    """The GPU share of each worker, checked against the nodes of the cluster."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    most_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    gpus = options.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if most_gpus >= 1 else 0.0
    if gpus > most_gpus:
        raise CnnSearchError(f"--gpus-per-trial {gpus:g}: no node of the Ray cluster has that many GPUs "
                             f"(the most on one node: {most_gpus:g}); use --gpus-per-trial 0 on a CPU-only cluster")
    if options.cpus_per_trial > most_cpus:
        raise CnnSearchError(f"--cpus-per-trial {options.cpus_per_trial:g}: no node of the Ray cluster has that "
                             f"many CPUs (the most on one node: {most_cpus:g})")
    total = ray.cluster_resources()
    fits = math.floor(total.get("CPU", 0.0) / options.cpus_per_trial)
    if gpus:
        fits = min(fits, math.floor(total.get("GPU", 0.0) / gpus))
    if fits < options.workers:
        log.warning("the Ray cluster fits %d of the %d workers at once; the others start as those finish",
                    fits, options.workers)
    return gpus


class StopOrder:
    """How the tasks of a stopped run end their trials: the one thing a Ray cancel cannot say.

    A Ray actor (no CPU of its own). A task that Ray cancels gets a KeyboardInterrupt whether
    this run was stopped by SIGTERM or by Ctrl-C; it asks here (:meth:`requeue`) whether to hand
    its trial back. Until the run is stopped the answer is ``--on-interrupt``'s, which a Ctrl-C
    that reached the task itself also follows.
    """

    def __init__(self, requeue: bool) -> None:
        self._requeue = requeue

    def stopped(self, requeue: bool) -> None:
        self._requeue = requeue

    def requeue(self) -> bool:
        return self._requeue


def _gather(ray: Any, refs: list[Any], order: Any) -> list[WorkerSummary]:
    """Each task's record; cancel them all when this process is stopped, saying how in ``order``."""
    try:
        running = list(refs)
        while running:
            with stops_held():  # a stop raised inside Ray's wait would come out of it as a SystemError
                _, running = ray.wait(running, num_returns=len(running), timeout=WAIT_POLL_SECONDS)
    except (KeyboardInterrupt, WorkerStopped) as stop:
        try:
            ray.get(order.stopped.remote(isinstance(stop, WorkerStopped)), timeout=ORDER_TIMEOUT_SECONDS)
        except ray.exceptions.RayError as exc:  # unanswered, the tasks follow --on-interrupt
            log.warning("could not tell the Ray workers how to end their trials: %s", exc)
        for ref in refs:
            ray.cancel(ref)  # raises KeyboardInterrupt in the task: its worker ends its trial as ordered
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS)
        raise
    out = []
    for index, ref in enumerate(refs):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayError as exc:
            # A task Ray gave up on (its process or node died more often than Ray retries).
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            out.append(WorkerSummary.failed(f"ray task {index}", first))
    return out


def task_device(device: str, gpu_ids: list[Any], cuda_available: bool) -> str:
    """The torch device of a Ray task: its first GPU (Ray sets ``CUDA_VISIBLE_DEVICES``) or the CPU.

    GPU ids without CUDA are logical GPUs declared on a CPU machine: the task trains on the CPU
    and still records the ids it was given.
    """
    if device == "cpu" or not gpu_ids or not cuda_available:
        return "cpu"
    return "cuda:0"


def _ray_worker(storage_url: str, study_name: str, index: int, device: str, threads: int,
                timeout: tuple[float | None, float | None], max_trials: int | None, data_dir: str | None,
                log_level: int, order: Any) -> WorkerSummary:
    """One Ray task: the worker loop with the GPU(s) Ray assigned (imports torch in the task, not the driver).

    Stopped (a Ray cancel, SIGTERM), it ends its trial as ``order`` says, and reports the stop as
    its error (``interrupted``).
    """
    import ray
    import torch

    from search.study.worker import WorkerSettings, worker_summary

    logging.basicConfig(level=log_level, format=f"%(asctime)s ray-worker{index} %(levelname)s %(message)s")
    gpu_ids = list(ray.get_gpu_ids())
    dev = task_device(device, gpu_ids, torch.cuda.is_available())
    attrs = {BACKEND: "ray", GPU_IDS: gpu_ids, CUDA_VISIBLE_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES"),
             RAY_NODE: ray.get_runtime_context().get_node_id()}
    settings = WorkerSettings(device=dev, worker_index=index, threads=threads, max_trials=max_trials,
                              timeout=timeout[0], started_at=timeout[1], data_dir=data_dir, attrs=attrs,
                              requeue_interrupt=lambda: ray.get(order.requeue.remote(), timeout=ORDER_TIMEOUT_SECONDS))
    name = f"ray task {index}"
    # Held while a trial is claimed, like in every other worker; a Ray cancel (SIGINT) stops it even where the
    # run was started with SIGINT ignored (else a stopped run's tasks trained on instead of handing trials back).
    with stop_on_signals(sigint_cancels=True):
        try:
            return worker_summary(storage_url, study_name, settings, name)
        except (KeyboardInterrupt, WorkerStopped):  # the worker loop ended its trial first
            return WorkerSummary.failed(name, INTERRUPTED, gpu_ids=gpu_ids)
