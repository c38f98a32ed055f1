"""The worker loop: the one loop every worker runs, however it was started.

Local ``--jobs`` processes, Ray tasks and ``cnnsearch worker`` on another machine all
call :func:`worker_loop` with a storage URL and a study name (picklable handles: each
worker opens its own connections), read the study's spec from the storage, load the data
once onto their device, and then repeat four steps until told to stop: claim a waiting
trial (:meth:`Worker.claim`), run it (:meth:`Worker.run`), record its outcome
(:meth:`Worker.record`), decide whether to go on (:meth:`Worker.stop_reason`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from reports.notes import refresh_study_note
from search.study.dataset import load_study_data, record_or_check_split
from search.study.errors import StudyError, TooManyFailures, WorkerStopped, user_errors
from search.study.objective import run_trial, worker_identity
from search.study.records import INTERRUPTED, TrialOutcome, WorkerSummary
from search.study.samplers import make_pruner, make_study_sampler
from search.study.signals import raise_held_stop, stops_held
from search.study.spec import StudySpec, load_spec
from search.study.tracking import study_tracker
from search.trial.data import TrialData, prepare_data
from search.trial.device import resolve_device, use_deterministic_kernels
from storage import StorageError, mask_url, open_storage
from storage.claims import claim_waiting_trial, hand_back_trial, past_budget, storage_lock
from storage.engine import DATABASE_LOST, short_reason
from storage.heartbeat import Heartbeat, LostRetries, StaleTrials, fail_and_retry, heartbeat_settings
from storage.records import GPU_IDS, STUDY_BUDGET
from storage.studies import is_original

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 2.0

STORAGE_OUTAGE_SECONDS = 600.0
"""How long a worker keeps retrying a database that went away before it gives up."""


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker runs: on which device, for how long, under which name.

    ``worker_index`` picks the GPU for ``device="auto"`` (the sampler's seed does not depend on it);
    ``max_trials`` and ``timeout`` (seconds; no new trial starts later, the running one
    finishes) bound this worker alone, the timeout counted from ``started_at`` (a
    ``time.time()``: when the command started, so that loading data and setting up the study
    count too) or else from when the worker starts; ``parallel`` tells the sampler that other workers
    sample at the same time; ``attrs`` are recorded on each of its trials besides host,
    pid and device (a Ray worker's GPU ids). ``requeue_interrupt`` is asked when a
    KeyboardInterrupt stops the worker: True hands its trial back instead of failing it (a Ray
    task, which Ray cancels by KeyboardInterrupt, asks its run whether it was stopped by SIGTERM).
    """

    device: str | torch.device = "auto"
    worker_index: int = 0
    threads: int | None = None
    max_trials: int | None = None
    timeout: float | None = None
    started_at: float | None = None
    data_dir: str | None = None
    parallel: bool = True
    name: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    requeue_interrupt: Callable[[], bool] | None = None


def worker_loop(storage_url: str, study_name: str, settings: WorkerSettings | None = None, *,
                data: TrialData | None = None,
                on_trial: Callable[[TrialOutcome], None] | None = None) -> WorkerSummary:
    """Run trials of study ``study_name`` until its budget is spent; return what was done.

    Stops when no trial is waiting and none is running anywhere (a running trial whose
    worker died is failed after the heartbeat grace period and its retry is picked up
    here), at a limit of ``settings``, or after the study's ``max_failures`` failed trials
    in a row (:class:`TooManyFailures`). A study without a budget makes this worker create
    trials until a limit or a signal stops it. ``data`` skips loading when the caller
    already holds the study's data on the device; ``on_trial`` is called with each outcome.

    A stop (KeyboardInterrupt, :class:`WorkerStopped`) propagates once the trial this worker
    holds is ended as :meth:`Worker.let_go` says.
    """
    outage = _Outage(mask_url(storage_url))
    worker = _join(storage_url, study_name, settings or WorkerSettings(), data, outage)
    while (reason := worker.stop_reason()) is None:
        trial_id = None
        try:
            trial_id = worker.claim()
            if trial_id is None:
                if worker.nothing_left():
                    break
                time.sleep(IDLE_POLL_SECONDS)  # others are running: wait to pick up a retry if one dies
                continue
            outcome = worker.run(trial_id)
        except (KeyboardInterrupt, WorkerStopped) as stop:
            worker.let_go(stop)
            raise
        except DATABASE_LOST as exc:
            # The database went away (a restart, a network cut). A trial it broke mid-way was failed
            # and queued again by Worker.run if the database was back by then; if not, it stays
            # RUNNING without heartbeats, and the next stale-trial check (here or in another worker)
            # fails it with its reason and queues its retry.
            outage.wait(exc)
            continue
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker ended this trial first: it saw no heartbeat for the grace period (this
            # worker stalled, or lost the database that long) and failed it, queueing its retry; or,
            # on SQLite, it claimed the same waiting trial at the same moment and finished it.
            log.warning("trial id %s was ended by another worker meanwhile; going on", trial_id)
            continue
        outage.reset()
        worker.record(outcome)
        if on_trial is not None:
            on_trial(outcome)
    if reason is not None:
        worker.summary.stopped_because = reason
    log.info("worker %s done: %s (%s)", worker.summary.worker, worker.summary.counts,
             worker.summary.stopped_because)
    return worker.summary


def worker_summary(storage_url: str, study_name: str, settings: WorkerSettings, name: str) -> WorkerSummary:
    """:func:`worker_loop` for a worker in a process of its own (``--jobs``, Ray): its summary, or its error.

    Too many failed trials and user errors come back as a :meth:`WorkerSummary.failed` named
    ``name`` (with the worker's GPU ids), for the process that started the worker to report.
    """
    try:
        return worker_loop(storage_url, study_name, settings)
    except TooManyFailures as exc:
        return WorkerSummary.failed(name, str(exc), too_many_failures=True, gpu_ids=settings.attrs.get(GPU_IDS))
    except user_errors() as exc:
        return WorkerSummary.failed(name, str(exc), gpu_ids=settings.attrs.get(GPU_IDS))


def _join(storage_url: str, study_name: str, settings: WorkerSettings, data: TrialData | None,
          outage: _Outage) -> Worker:
    """The worker, joined to the study; a database that goes away meanwhile is waited for like in the loop.

    Joining reads the study and records or checks its split: a worker started while the
    database restarts waits for it instead of dying (the embedded datasets are cached in the
    process, so a retry does not decode them again).
    """
    while True:
        try:
            worker = Worker(storage_url, study_name, settings, data)
        except DATABASE_LOST as exc:
            outage.wait(exc)
            continue
        outage.reset()
        return worker


class Worker:
    """One worker's state in a study: its storage, study, spec, device, data and what it did so far."""

    def __init__(self, storage_url: str, study_name: str, settings: WorkerSettings,
                 data: TrialData | None = None) -> None:
        self.started = time.time() if settings.started_at is None else settings.started_at
        self.settings = settings
        self.storage_url = storage_url
        if settings.threads:
            torch.set_num_threads(settings.threads)
        # Optuna wraps an RDBStorage in its trial cache inside every Study; claiming trials through
        # that same wrapper keeps the cache coherent (a trial claimed on the bare storage is unknown
        # to the Study's cache). get_storage is how Optuna itself builds that wrapper.
        rdb = open_storage(storage_url, **heartbeat_settings(), existing=True)
        self.storage = optuna.storages.get_storage(rdb)
        try:
            self.study_id = self.storage.get_study_id_from_name(study_name)
        except KeyError:
            raise StudyError(f"no study named {study_name!r} in this storage; create it with `cnnsearch run`") \
                from None
        self.spec = load_spec(optuna.load_study(study_name=study_name, storage=self.storage))
        self.spec.scores()  # a user's score function this machine cannot import: refused to join (exit code 2)
        self.study = _open_study(self.storage, study_name, self.spec, settings)
        self.device = resolve_device(settings.device, settings.worker_index)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # AMP, cudnn and new tensors follow the current device
        if self.spec.deterministic:
            use_deterministic_kernels()
        self.identity = {**worker_identity(self.device, settings.name), **settings.attrs}
        self.data = data if data is not None else self._load_data()
        self.summary = WorkerSummary(worker=self.identity["worker"], device=str(self.device),
                                     gpu_ids=list(settings.attrs.get(GPU_IDS) or []))
        self.failures_in_a_row = 0
        self.stale = StaleTrials()
        self.lost = LostRetries()
        self.tracker = study_tracker(self.spec.mlflow, study_name, [o.metric for o in self.spec.objective_list])
        self.held: int | None = None
        """The id of the trial this worker claimed and has not ended yet."""
        self.started_held = False
        """Whether :meth:`run` began the held trial (False: stopped between claiming and running it)."""
        log.info("worker %s joined study %r on %s", self.identity["worker"], study_name, self.device)

    def _load_data(self) -> TrialData:
        images, split = load_study_data(self.spec, self.settings.data_dir)
        record_or_check_split(self.study, self.spec, images, split)
        return prepare_data(images, split, self.device)

    def stop_reason(self) -> str | None:
        """Why this worker stops before its next trial (a limit of its settings), or None to go on."""
        limit, timeout = self.settings.max_trials, self.settings.timeout
        if limit is not None and len(self.summary.outcomes) >= limit:
            return f"ran its {limit} trials"
        if timeout is not None and time.time() - self.started > timeout:
            return f"timeout of {timeout:g} s"
        return None

    def claim(self) -> int | None:
        """Fail the trials of dead workers (queueing their retries, and those a lost database cut off), then
        claim a waiting trial.

        When none waits, a new trial is made for the sampler while the study is under its budget
        (or has none); None means nothing to claim. Both under the study's lock, so workers
        finishing together never make one trial too many. A stop signal waits for the end of
        this step: the trial claimed is then :attr:`held`, and :meth:`let_go` hands it back.
        """
        self.held = None  # what an earlier trial left (another worker ended it) is not this worker's
        with stops_held():
            self.stale.fail(self.study, self.storage, self.study_id)
            with storage_lock(self.storage, self.study.study_name) as still_held:
                self.lost.queue(self.study, self.storage)  # a failure whose retry a lost database cut off
                trial_id = claim_waiting_trial(self.storage, self.study_id)
                if trial_id is None and (seen := self._trials_under_budget(budget := self._budget())) is not None:
                    still_held()  # the count above was made under the lock: a database restart since ends it
                    trial_id = self.storage.create_new_trial(self.study_id)
                    if budget is not None and past_budget(self.storage, self.study_id, trial_id, budget, seen):
                        log.warning("trial id %d set aside unrun: made past the budget of %d as the database "
                                    "restarted", trial_id, budget)
                        trial_id = None
            self.held, self.started_held = trial_id, False
        return trial_id

    def _budget(self) -> int | None:
        """How many trials the study may make (None: no limit; a grid's are all enqueued: 0).

        Read from the study each time: a resumed ``run --trials`` may have raised it since this
        worker joined.
        """
        if self.spec.sampler == "grid":
            return 0  # its points within the budget are all enqueued (each runs once)
        return self.storage.get_study_user_attrs(self.study_id).get(STUDY_BUDGET)

    def _trials_under_budget(self, budget: int | None) -> int | None:
        """How many trials the study holds, when it may make one more (retries of lost trials do not count
        against the budget); None when the budget is spent. Without a budget: 0, nothing read."""
        if budget is None or budget <= 0:
            return 0 if budget is None else None
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        return len(trials) if sum(1 for t in trials if is_original(t)) < budget else None

    def nothing_left(self) -> bool:
        """Whether no trial of the study runs or waits anywhere: with none to claim, the budget is spent.

        Waiting trials count too: a dead worker's trial queued again after this worker's claim
        found nothing (queued before it is failed, so one read sees it running or waiting).
        """
        return not self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))

    def run(self, trial_id: int) -> TrialOutcome:
        """Run the claimed trial under a heartbeat.

        A trial the database broke is failed and queued again: it does not use the budget, as
        the trial of a killed worker does not. The error propagates. A stop propagates with
        the trial still RUNNING, for :meth:`let_go`.
        """
        self.started_held = True
        try:
            with Heartbeat(self.storage, trial_id):
                # A stop waits for the end of a training step (the step's state is then checkpointed), or
                # for the trial's end when it comes outside training.
                with stops_held():
                    outcome = run_trial(self.study, trial_id, self.spec, self.data, self.device, self.identity,
                                        stop=raise_held_stop)
                    self.held = None
        except DATABASE_LOST:
            self._fail_lost(trial_id)
            raise
        if self.device.type == "cuda":
            # The trial's cached blocks back to the driver: a worker cannot tell whether others share
            # its GPU (--gpus-per-trial 0.5, more jobs than GPUs, compose replicas), and without this
            # each would keep the peak of its largest trial reserved for ever. No gc.collect here
            # (~0.2-1 s with a worker's heap): the finished trial's tensors are freed by refcount.
            torch.cuda.empty_cache()
        if self.tracker is not None:  # logged by the worker that ran it; never raises
            self.tracker.trial_ended(self.storage.get_trial(trial_id))
        return outcome

    def _fail_lost(self, trial_id: int) -> None:
        """Fail a trial the database broke, with its reason, and queue it again, if the database is back.

        If it is not, the trial stays RUNNING without heartbeats, and the stale-trial check fails
        and retries it once the database is back.
        """
        try:
            if fail_and_retry(self.study, self.storage, trial_id, "storage", "its worker lost the database mid-trial"):
                log.warning("trial id %d lost the database mid-trial; queued again", trial_id)
        except DATABASE_LOST:
            pass  # still gone
        self.held = None

    def let_go(self, stop: BaseException) -> None:
        """End the trial this stopped worker holds, if any, before the stop propagates.

        Handed back to the study as WAITING (the same trial, which the next worker to claim it
        resumes from its checkpoint; no budget used) on :class:`WorkerStopped` (SIGTERM, the
        run gone, Ctrl-C with ``--on-interrupt requeue``) and on a stop that came before the
        trial started running; else (Ctrl-C) FAIL ``interrupted``, queued again. Called after
        training raised, never from the signal handler: the trial's checkpoint is written by
        then, so no other worker claims it before it is. A further stop waits until this is done.
        """
        trial_id, self.held = self.held, None
        if trial_id is None:
            return
        with stops_held():
            try:
                if isinstance(stop, WorkerStopped) or not self.started_held or self._requeue_interrupt():
                    if hand_back_trial(self.storage, trial_id):
                        log.info("trial id %d handed back to the study as waiting", trial_id)
                else:
                    fail_and_retry(self.study, self.storage, trial_id, INTERRUPTED,
                                   "worker stopped by Ctrl-C (KeyboardInterrupt)")
            except DATABASE_LOST as exc:  # the stale-trial check of another worker fails and retries it later
                log.warning("trial id %d left running: %s", trial_id, short_reason(exc))

    def _requeue_interrupt(self) -> bool:
        ask = self.settings.requeue_interrupt
        try:
            return ask is not None and ask()
        except Exception as exc:  # noqa: BLE001 - no answer: a KeyboardInterrupt fails the trial, as without one
            log.warning("could not ask whether to hand the trial back: %s", short_reason(exc))
            return False

    def record(self, outcome: TrialOutcome) -> None:
        """Count the outcome; refresh the dashboard's note; stop the study after too many failures in a row."""
        if outcome.state == TrialState.COMPLETE:
            refresh_study_note(self.study, outcome.number)  # the dashboard's note: best config so far; never raises
        self.summary.outcomes.append(outcome)
        self.failures_in_a_row = self.failures_in_a_row + 1 if outcome.state == TrialState.FAIL else 0
        if self.failures_in_a_row >= self.spec.max_failures:
            raise TooManyFailures(f"study {self.study.study_name!r} stopped: {self.failures_in_a_row} trials failed "
                                  f"in a row (--max-failures {self.spec.max_failures}); last reason: {outcome.reason}")


def _open_study(storage: optuna.storages.BaseStorage, study_name: str, spec: StudySpec,
                settings: WorkerSettings) -> optuna.Study:
    """The study with the study's sampler (seeded per trial, never repeating a config) and pruner."""
    return optuna.load_study(
        study_name=study_name, storage=storage,
        sampler=make_study_sampler(spec.sampler, spec.seed, spec.space, n_objectives=len(spec.objectives),
                                   parallel=settings.parallel,
                                   constraints=bool(spec.max_params or spec.max_latency_ms)),
        pruner=make_pruner(spec.pruner, spec.max_epochs, len(spec.objectives)),
    )


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
        reason = short_reason(error)
        if now - self._since > STORAGE_OUTAGE_SECONDS:
            raise StorageError(f"storage {self._shown_url} unreachable for {now - self._since:.0f} s "
                               f"(last error: {reason})") from error
        delay = min(30.0, 2.0 ** self._attempt) * random.uniform(0.75, 1.25)  # jitter: workers do not retry in step
        # One warning per outage, not per try: a restart is a handful of tries, a long outage dozens.
        level = logging.WARNING if self._attempt == 0 else logging.DEBUG
        log.log(level, "storage %s: %s; trying again for up to %.0f s", self._shown_url, reason,
                STORAGE_OUTAGE_SECONDS)
        self._attempt += 1
        time.sleep(delay)

    def reset(self) -> None:
        if self._since is not None:
            log.warning("storage %s is back after %.0f s", self._shown_url, time.monotonic() - self._since)
        self._since = None
        self._attempt = 0
