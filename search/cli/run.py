"""`cnnsearch run` and `cnnsearch worker`: start a study's workers here, or join one from this machine."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import time
from typing import TYPE_CHECKING, Any

from search.cli.data import host_data_args
from search.cli.flags import (
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    Command,
    download_weights_arg,
    storage_arg,
    study_arg,
    study_name,
    usage,
)
from search.cli.studies import no_best, print_best
from search.trial.errors import CnnSearchError
from spaces.derive import NAME as AUTO

if TYPE_CHECKING:
    from search.study.ray_workers import RayOptions
    from search.study.spec import StudySpec
    from spaces import Space

log = logging.getLogger(__name__)


def add_run_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--space", help="a preset name (see `cnnsearch spaces`) or a YAML file (default: auto, a space "
                                   "derived from the data and the budget; `run` prints what it derived and why)")
    p.add_argument("--dataset", default="mnist5k", help="dataset name (see `cnnsearch datasets`)")
    p.add_argument("--data-dir", help="where torchvision datasets live")
    p.add_argument("--download", action="store_true", help="download a torchvision dataset into --data-dir first")
    p.add_argument("--image-size", type=POSITIVE_INT, help="resize imagefolder images to this side")
    download_weights_arg(p)
    p.add_argument("--sampler", default=None,
                   help="auto|tpe|random|grid|gp|cmaes|qmc|nsga2 (default auto: GP for one objective over "
                        "at most 12 searched parameters, else TPE)")
    p.add_argument("--pruner", default=None, help="none|median|sha|hyperband (default hyperband)")
    p.add_argument("--objectives", default="accuracy",
                   help="comma-separated; the first ranks the trials and is what the pruner judges each epoch: "
                        "accuracy, loss, macro_f1, balanced_accuracy, top5_accuracy (on the val split), latency, "
                        "params, flops, or your function score(y_true, logits) as module:function:max or "
                        "path/to/file.py:function:min")
    p.add_argument("--trials", type=POSITIVE_INT, help="trial budget of the whole study (all workers together)")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, help="stop starting new trials after this many seconds")
    p.add_argument("--trial-timeout", type=POSITIVE_FLOAT, help="prune a trial that trains longer than this (seconds)")
    p.add_argument("--jobs", type=int, help="local worker processes (default 1; same as --workers)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of the sampler and the trials")
    p.add_argument("--split-seed", type=NON_NEGATIVE_INT, default=0, help="seed of the train/val/test split")
    p.add_argument("--warm-start", metavar="STUDY", type=study_name,
                   help="enqueue the best configs of this study first")
    p.add_argument("--no-start", action="store_true",
                   help="skip the space's start points: every trial is the sampler's own (the space's "
                        "low_cost values, if any, still set those params of the first)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--max-params", type=POSITIVE_INT, help="constraint: at most this many parameters")
    p.add_argument("--max-latency-ms", type=POSITIVE_FLOAT, help="constraint: at most this latency (ms/image)")
    p.add_argument("--max-failures", type=POSITIVE_INT, default=5, help="stop after this many failed trials in a row")
    p.add_argument("--cv", type=POSITIVE_INT, metavar="K",
                   help="k-fold cross-validation: each trial trains K times, once per stratified fold of train + val, "
                        "and its value is the mean val accuracy (the test split stays untouched)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each completed trial's weights and learning curve in the artifact store "
                        "(`cnnsearch export` then ships the weights with the recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--mlflow", nargs="?", const="mlruns", metavar="URI",
                   help="log every trial as an MLflow run in the experiment named after the study (default URI: "
                        "./mlruns; or a tracking server URL, its password in $MLFLOW_TRACKING_PASSWORD); every "
                        "worker that joins logs too")
    p.add_argument("--deterministic", action="store_true",
                   help="every worker trains with deterministic kernels (slower on GPUs): GPU trials can then be "
                        "replayed exactly by `cnnsearch train --device cuda` on the same GPU model")
    _backend_args(p)
    _interrupt_arg(p)
    host_data_args(p)
    return cmd_run


def _interrupt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-interrupt", choices=("fail", "requeue"), default="fail",
                   help="what Ctrl-C does to a running trial: fail (FAIL 'interrupted', and a retry queued) or "
                        "requeue (handed back to the study as waiting, as on SIGTERM, for a worker to continue)")


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workers: local processes or Ray tasks")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: Ray tasks, each a worker with its own GPU share")
    g.add_argument("--workers", type=int, help="how many workers (default 1)")
    g.add_argument("--ray-address", help="Ray cluster to join: auto or HOST:PORT (default: a local cluster for this "
                                         "command, shut down at its end)")
    g.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per Ray worker; 0.5 puts two on a GPU (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-trial", type=float,
                   help="CPUs (and training threads) per Ray worker (default 1)")


def _worker_count(args: argparse.Namespace) -> int:
    jobs = getattr(args, "jobs", None)
    if args.workers is not None and jobs is not None and args.workers != jobs:
        raise CnnSearchError(f"--workers {args.workers} and --jobs {jobs} disagree; give one of them")
    count = args.workers if args.workers is not None else (jobs if jobs is not None else 1)
    if count < 1:
        flag = "--workers" if args.workers is not None else "--jobs"
        raise CnnSearchError(f"{flag} must be at least 1, got {count}")
    return count


def _ray_options(args: argparse.Namespace, workers: int) -> RayOptions | None:
    """The Ray settings of ``--backend ray`` (None for local); Ray flags without it are refused."""
    if args.backend != "ray":
        for flag, value in (("--ray-address", args.ray_address), ("--gpus-per-trial", args.gpus_per_trial),
                            ("--cpus-per-trial", args.cpus_per_trial)):
            if value is not None:
                raise CnnSearchError(f"{flag} needs --backend ray (got --backend {args.backend})")
        return None
    if args.device not in ("auto", "cpu"):
        raise CnnSearchError(f"--device {args.device!r} with --backend ray: Ray assigns the GPUs; use auto or cpu")
    from search.study.ray_workers import RayOptions  # does not import Ray itself

    return RayOptions(workers=workers, gpus_per_trial=args.gpus_per_trial, address=args.ray_address,
                      cpus_per_trial=1.0 if args.cpus_per_trial is None else args.cpus_per_trial)


def cmd_run(args: argparse.Namespace) -> int:
    started = time.time()  # --timeout counts from here: loading the data and creating the study use it too
    from search.study.samplers import default_pruner, resolve_sampler
    from search.study.spec import StudySpec
    from search.trial.memory import data_memory_setting, worker_memory_setting
    from spaces import load_space, parse_space
    from storage.heartbeat import heartbeat_settings

    heartbeat_settings()  # the workers read it when they start: refused now, before the study is created
    worker_memory_setting()  # the same for the memory a trial and its images may use
    data_memory_setting()
    workers = _worker_count(args)
    ray = _ray_options(args, workers)
    auto = args.space in (None, AUTO)
    # The auto space is derived once the flags are known to be good (deriving loads the data and times
    # a network); until then an empty stand-in takes its place.
    space = parse_space({"params": {}}, source=AUTO, name=AUTO) if auto else load_space(args.space)
    sampler = resolve_sampler(args.sampler, space)
    if args.trials is None and args.timeout is None and sampler != "grid":
        return usage("give --trials N (study-wide budget) or --timeout SECONDS, or both")
    spec = StudySpec(
        space=space, dataset=args.dataset, objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
        sampler=sampler, pruner=args.pruner or default_pruner(sampler), seed=args.seed,
        image_size=args.image_size, split_seed=args.split_seed, data_dir=args.data_dir,
        max_params=args.max_params, max_latency_ms=args.max_latency_ms, trial_timeout=args.trial_timeout,
        max_failures=args.max_failures, budget=args.trials, keep_checkpoints=args.keep_checkpoints,
        deterministic=args.deterministic, cv=args.cv, mlflow=_mlflow_uri(args.mlflow),
    )
    spec.scores()  # a user's score function that cannot be imported is refused before the study is created
    if auto:
        space, derivation = _auto_space(args, workers, started)
        spec = dataclasses.replace(spec, space=space, space_derivation=derivation,
                                   trial_timeout=spec.trial_timeout if args.trial_timeout is not None
                                   else derivation.get("trial_timeout"))
    if args.no_start and space.start:
        print(f"--no-start: the space's {len(space.start)} start point(s) are not tried")
        space.start = []
    for warning in space.start_warnings():
        log.warning(warning)
    if spec.sampler == "grid":
        space.grid()  # refuses a space without a finite grid before anything is created
        if args.trials is not None and args.trials > (size := space.grid_size()):
            print(f"--trials {args.trials} is more than the grid's {size} points: each point runs once, "
                  f"{size} trials")
    from search.study.local import run_study
    from search.study.signals import stop_on_signals

    with stop_on_signals(args.on_interrupt):
        result = run_study(spec, args.study, args.storage, timeout=args.timeout, started_at=started, jobs=workers,
                           device=args.device, warm_start=args.warm_start, progress=not args.no_progress,
                           download=args.download, ray=ray, on_interrupt=args.on_interrupt)
    import optuna

    from reports.summary import best_records
    from storage import mask_url, open_storage

    study = optuna.load_study(study_name=args.study, storage=open_storage(result.storage_url))
    counts = result.counts
    print(f"study {args.study!r} in {mask_url(result.storage_url)}: {counts['COMPLETE']} complete, "
          f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['WAITING']} waiting "
          f"({result.wall_seconds:.0f} s)")
    if len(result.workers) > 1:
        for w in result.workers:
            print(f"  worker {w.worker}: {w.error or w.counts} ({w.stopped_because})")
    best = best_records(study, 1)
    if not best:
        print(no_best(study))
        if args.timeout is not None and not sum(len(w.outcomes) for w in result.workers):
            print(f"the --timeout of {args.timeout:g} s was spent before a trial could start (loading the data "
                  "and setting up the study count too); give a longer --timeout")
        return 0
    print_best(best, spec.objectives, spec.directions)
    if spec.mlflow:
        _attach_best_recipe(spec, args.study, result.storage_url, best[0]["number"])
    # Quoted: the line is for pasting into a shell, and a study name may hold $(...) or quotes.
    print(f"\nreport: cnnsearch report --study {shlex.quote(args.study)}   "
          f"(writes cnnsearch-reports/{args.study}/)")
    return 0


def _auto_space(args: argparse.Namespace, workers: int, started: float) -> tuple[Space, dict[str, Any]]:
    """The ``auto`` space of this run and its derivation, after printing what was derived and why.

    A study that already holds an ``auto`` space resumes with it (derived again, from a new
    timing, it could differ, and the study would refuse it); otherwise the space is derived
    from the data and the budget (:mod:`spaces.derive`, :mod:`search.study.auto_space`).
    """
    from search.study.auto_space import derive_for
    from search.study.local import cpu_threads_per_worker
    from search.trial.data import make_split
    from search.trial.datasets import absolute_dataset_name, load_dataset
    from search.trial.device import resolve_device
    from storage import resolve_storage_url

    url = resolve_storage_url(args.storage)
    recorded = _recorded_auto_space(url, args.study)
    if recorded is not None:
        space, derivation = recorded
        print(f"space {AUTO}: as derived when study {args.study!r} was created")
        for what, why in derivation.get("decisions", []):
            print(f"  {what}: {why}")
        return space, derivation
    import torch

    device = resolve_device("cpu" if args.backend == "ray" else args.device)
    images = load_dataset(absolute_dataset_name(args.dataset), download=args.download, image_size=args.image_size,
                          data_dir=os.path.abspath(os.path.expanduser(args.data_dir)) if args.data_dir else None)
    split = make_split(images.labels, seed=args.split_seed, parts=images.parts)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        threads = max(1, int(args.cpus_per_trial or 1)) if args.backend == "ray" else cpu_threads_per_worker(workers)
        torch.set_num_threads(threads)
        where = f"this machine's CPU, {threads} thread{'s' if threads > 1 else ''}"
    left = None if args.timeout is None else args.timeout - (time.time() - started)
    derivation = derive_for(images, split, device, seconds_left=left, trials=args.trials, workers=workers,
                            measured_on=where, trial_timeout=args.trial_timeout, folds=args.cv or 1,
                            seed=args.seed)
    for line in derivation.lines():
        print(line)
    return derivation.space, derivation.to_record()


def _recorded_auto_space(storage_url: str, study_name: str) -> tuple[Space, dict[str, Any]] | None:
    """The ``auto`` space and derivation study ``study_name`` was made with; None for a new study or another space."""
    from search.study.errors import user_errors
    from search.study.spec import load_spec
    from storage import open_storage
    from storage.engine import DATABASE_LOST
    from storage.studies import load_study

    try:
        spec = load_spec(load_study(open_storage(storage_url, heartbeat_interval=None, read_only=True), study_name))
    except (*user_errors(), *DATABASE_LOST):
        return None  # no such study (or database) yet: creating it says what is wrong, if anything
    if spec.space_derivation is None:
        return None
    return spec.space, spec.space_derivation


def _mlflow_uri(value: str | None) -> str | None:
    """``--mlflow``'s URI as the study records it: a path made absolute, a password moved where MLflow reads it."""
    if value is None:
        return None
    from search.study.tracking import tracking_uri, use_credentials

    return use_credentials(tracking_uri(value))


def _attach_best_recipe(spec: StudySpec, study_name: str, storage_url: str, number: int) -> None:
    """The best trial's exported recipe as an artifact of its MLflow run (a tracker that is down: warned, skipped)."""
    from search.results.recipe import export_recipe
    from search.study.tracking import study_tracker

    tracker = study_tracker(spec.mlflow, study_name, [o.metric for o in spec.objective_list])
    if tracker.log_best_recipe(number, lambda folder: export_recipe(storage_url, study_name, folder, trial=number)):
        print(f"MLflow: experiment {study_name!r} at {tracker.shown_uri}; the recipe of trial #{number} is attached "
              "to its run")


def add_worker_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--trials", type=POSITIVE_INT, help="stop after this many trials of this worker")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, help="stop starting new trials after this many seconds")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--threads", type=POSITIVE_INT, help="CPU threads for training")
    p.add_argument("--data-dir", help="where this machine keeps the study's torchvision dataset")
    p.add_argument("--name", help="worker name shown in `cnnsearch status` (default host:pid)")
    download_weights_arg(p)
    _backend_args(p)
    _interrupt_arg(p)
    host_data_args(p)
    return cmd_worker


def cmd_worker(args: argparse.Namespace) -> int:
    started = time.time()  # --timeout counts from here, as for run
    from search.study.signals import stop_on_signals
    from search.study.worker import WorkerSettings, worker_loop
    from search.trial.memory import data_memory_setting, worker_memory_setting
    from storage import resolve_storage_url

    worker_memory_setting()  # refused before joining, not by every trial
    data_memory_setting()
    workers = _worker_count(args)
    ray = _ray_options(args, workers)
    if ray is None and workers > 1:
        return usage(f"--workers {workers} needs --backend ray; or start {workers} `cnnsearch worker` processes")
    _warn_space_fit(resolve_storage_url(args.storage), args.study)
    with stop_on_signals(args.on_interrupt):
        if ray is not None:
            return _ray_workers(args, ray, started)
        settings = WorkerSettings(device=args.device, threads=args.threads, max_trials=args.trials,
                                  timeout=args.timeout, started_at=started, data_dir=args.data_dir, name=args.name)
        summary = worker_loop(resolve_storage_url(args.storage), args.study, settings)
    print(f"worker {summary.worker} on {summary.device}: {summary.counts} ({summary.stopped_because})")
    return 0


def _warn_space_fit(storage_url: str, study_name: str) -> None:
    """Say once, before the workers start, when the study's space asks for more than its data holds.

    From what the study recorded (its space, the input shape its first worker found); a study
    that cannot be read yet is left to the worker loop, which says why or waits for the database.
    """
    from search.study.errors import user_errors
    from search.study.spec import load_spec
    from search.trial.models import space_fit_warning
    from storage import open_storage
    from storage.engine import DATABASE_LOST
    from storage.records import INPUT_SHAPE
    from storage.studies import load_study

    try:
        study = load_study(open_storage(storage_url, heartbeat_interval=None, read_only=True), study_name)
        shape, space = study.user_attrs.get(INPUT_SHAPE), load_spec(study).space
    except (*user_errors(), *DATABASE_LOST):
        return
    if shape and (misfit := space_fit_warning(space, tuple(shape))) is not None:
        log.warning(misfit)


def _ray_workers(args: argparse.Namespace, ray: RayOptions, started: float) -> int:
    """``cnnsearch worker --backend ray``: Ray tasks join the study (``--trials`` counts per worker)."""
    for flag, value in (("--name", args.name), ("--threads", args.threads)):
        if value is not None:
            hint = "each Ray worker is named host:pid" if flag == "--name" else "use --cpus-per-trial"
            raise CnnSearchError(f"{flag} does not apply to --backend ray: {hint}")
    from search.study.ray_workers import run_ray_workers
    from search.study.records import raise_worker_errors
    from storage import resolve_storage_url

    results = run_ray_workers(resolve_storage_url(args.storage), args.study, ray, device=args.device,
                              timeout=args.timeout, max_trials=args.trials, data_dir=args.data_dir,
                              started_at=started, on_interrupt=args.on_interrupt)
    for w in results:
        print(f"worker {w.worker} on {w.device or '?'} (Ray GPUs {w.gpu_ids or 'none'}): "
              f"{w.error or w.counts} ({w.stopped_because})")
    raise_worker_errors(results)
    return 0
