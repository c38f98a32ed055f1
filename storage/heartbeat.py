"""A trial's heartbeat: proof, written to the storage, that its worker is alive.

Two records per beat: Optuna's heartbeat row (what ``fail_stale_trials`` reads to fail the
trial of a dead worker) and the trial user attr :data:`storage.records.LAST_HEARTBEAT` (seconds since
the epoch), which ``cnnsearch status`` and the dashboard can read: Optuna has no public way
to read its heartbeat table back.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage.claims import storage_lock
from storage.engine import short_reason
from storage.errors import StorageError
from storage.periodic import Periodic
from storage.records import FAIL_MESSAGE, FAIL_REASON, HANDED_BACK, LAST_HEARTBEAT, OVER_BUDGET, RETRY_HISTORY

log = logging.getLogger(__name__)

INTERVAL_ENV = "CNNSEARCH_HEARTBEAT_INTERVAL"
"""Seconds between heartbeats of a worker's running trial (default 10)."""

GRACE_ENV = "CNNSEARCH_HEARTBEAT_GRACE"
"""Seconds without a heartbeat after which a trial's worker counts as dead (default 3 intervals)."""

DEFAULT_INTERVAL = 10


def heartbeat_settings(environ: Mapping[str, str] | None = None) -> dict[str, int | None]:
    """``open_storage`` keyword arguments for heartbeats, from :data:`INTERVAL_ENV` and :data:`GRACE_ENV`.

    A setting of the deployment, not of one command: every worker of a study should use the
    same values, and workers started by Ray or docker-compose inherit the environment, not
    flags. Unset means the defaults (10 s, grace three intervals); ``0`` turns heartbeats off.

    Raises:
        StorageError: a value that is not a whole number of seconds, or a grace period not longer
            than the interval (checked here, so a command refuses it before it creates anything).
    """
    env = os.environ if environ is None else environ
    interval = _seconds(env, INTERVAL_ENV, DEFAULT_INTERVAL)
    grace = _seconds(env, GRACE_ENV, None)
    if interval and grace is not None and grace <= interval:
        raise StorageError(f"${GRACE_ENV}={grace} must be longer than the heartbeat interval ({interval} s, "
                           f"${INTERVAL_ENV}); use e.g. {3 * interval}")
    return {"heartbeat_interval": interval or None, "grace_period": grace}


def _seconds(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StorageError(f"${name}={raw!r} is not a number of seconds; use a whole number like 10 (0: off)")
    return value


class Heartbeat:
    """Record a heartbeat for one trial every ``interval`` seconds until stopped.

    Written by hand because Optuna's heartbeat thread lives in a private module
    (``optuna.storages._heartbeat``) and only runs inside ``Study.optimize``; our worker
    loop claims trials itself. A storage without heartbeats makes this a no-op. A failed
    write (a database restart) is logged and retried at the next beat, not raised: the
    trial keeps training and the grace period covers short outages.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        get_interval = getattr(storage, "get_heartbeat_interval", None)
        interval = get_interval() if get_interval else None
        self._beats = Periodic(f"heartbeat-{trial_id}", interval, self._beat, first_now=True) if interval else None

    def __enter__(self) -> Heartbeat:
        if self._beats is not None:
            self._beats.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._beats is not None:
            self._beats.__exit__(*exc)

    def _beat(self) -> bool:
        """Record one beat; False once the trial has ended (nothing left to prove)."""
        try:
            self._storage.record_heartbeat(self._trial_id)
            self._storage.set_trial_user_attr(self._trial_id, LAST_HEARTBEAT, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the trial
            log.warning("heartbeat for trial id %d not recorded: %s", self._trial_id, short_reason(exc))
        return True


class StaleTrials:
    """Fails the running trials whose worker stopped beating, each with its reason, and queues their retries.

    What Optuna's ``fail_stale_trials`` does, plus the reason (``interrupted``), plus the trials
    Optuna's check cannot see. Optuna reads its heartbeat rows (``_get_stale_trial_ids``, the
    heartbeat storages' own query, on the database's clock) and skips a running trial that has no
    row: one whose worker died, or lost the database, between claiming it and its first beat. Such
    a trial stayed RUNNING for ever and the study never ended. So this checker also remembers, on
    its own monotonic clock (workers' clocks and time zones may differ), the
    :data:`~storage.records.LAST_HEARTBEAT` each running trial showed when first seen: a trial
    still running with the same value a grace period later had no beat in that time. One instance
    per worker, asked before each claim. Another worker failing the same trial at the same moment
    is no error: one of the two does it.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[object, float]] = {}

    def fail(self, study: optuna.Study, storage: optuna.storages.BaseStorage, study_id: int) -> None:
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        if not interval:
            return
        unbeaten = self._unbeaten(storage, study_id, _grace(storage, interval))
        stale = set(storage._get_stale_trial_ids(study_id)) | unbeaten
        for trial_id in sorted(stale):
            self._seen.pop(trial_id, None)
            if fail_and_retry(study, storage, trial_id, "interrupted",
                              "no heartbeat within the grace period: its worker was killed or lost the database"):
                log.warning("trial %d failed: its worker stopped sending heartbeats; queued for a retry",
                            storage.get_trial(trial_id).number)

    def _unbeaten(self, storage: optuna.storages.BaseStorage, study_id: int, grace: float) -> set[int]:
        """The running trials whose last beat this checker saw unchanged for ``grace`` seconds."""
        now = time.monotonic()
        running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        seen, self._seen = self._seen, {}
        stale = set()
        for trial in running:
            beat = trial.user_attrs.get(LAST_HEARTBEAT)
            first = seen.get(trial._trial_id)
            if first is None or first[0] != beat:
                first = (beat, now)
            elif now - first[1] > grace:
                stale.add(trial._trial_id)
            self._seen[trial._trial_id] = first
        return stale


def _grace(storage: optuna.storages.BaseStorage, interval: int) -> float:
    """The storage's grace period as Optuna reads it (two intervals when unset)."""
    backend = getattr(storage, "_backend", storage)  # get_storage wraps an RDBStorage in a cache
    return getattr(backend, "grace_period", None) or 2 * interval


RETRIED_REASONS = ("interrupted", "storage")
"""The :data:`~storage.records.FAIL_REASON` of a trial :func:`fail_and_retry` ends: each is queued again."""


def fail_and_retry(study: optuna.Study, storage: optuna.storages.BaseStorage, trial_id: int, reason: str,
                   message: str, *, queue_first: bool = False) -> bool:
    """Mark the running trial ``trial_id`` FAIL with its reason and queue it again; False if it had ended
    (or had been set aside past the budget: then failed, never queued).

    The retry is what Optuna's retry callback makes of a dead worker's trial: a new trial with the
    same params and user attrs (not the failure's reason), linked to this one (system attr
    ``failed_trial``), outside the budget. Nothing is queued with heartbeats off (no retry
    callback), for a trial retried ``max_retry`` times already, or for one whose retry is queued.

    Under the study's lock (:func:`storage.claims.storage_lock`; never call this holding it), so
    that a worker sees either both writes or neither: two workers that find the same stale trial
    queue one retry, and :func:`queue_lost_retries` never takes a failure on its way to its retry
    for a lost one. The order: by default the trial is failed first. With ``queue_first`` the
    retry is queued before the trial fails, so that a worker looking for work always sees it
    running or waiting, never neither (it would end, taking the budget for spent): for a caller
    that ends a trial no worker of the study holds any more (a run whose worker process died),
    where a worker could be asking just then. A database lost between the two writes leaves a
    failed trial without its retry (:func:`queue_lost_retries` queues it), or a running one whose
    retry is queued (the stale-trial check fails it later, and queues nothing more).
    """
    with storage_lock(storage, study.study_name):
        retry = _retry_callback(storage)
        trial = storage.get_trial(trial_id)
        if trial.state.is_finished():
            return False
        if trial.user_attrs.get(FAIL_REASON) == OVER_BUDGET:
            # Set aside unrun by storage.claims.past_budget, and its worker lost the database before it
            # failed it: failed now, its reason kept (it keeps the trial out of the count), no retry.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            return False
        if retry is not None and trial.number in _retried(study.get_trials(deepcopy=False)):
            retry = None  # queued before a failure that did not land (queue_first, then the database went)
        if queue_first and retry is not None:
            _queue_retry(study, retry, trial)
        try:
            # A trial's user attrs cannot be written once it has ended: the reason first.
            storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
            storage.set_trial_user_attr(trial_id, FAIL_MESSAGE, message)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        if not queue_first and retry is not None:
            _queue_retry(study, retry, trial)
        return True


def queue_lost_retries(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Queue the retry :func:`fail_and_retry` did not: of each trial it failed whose retry is not queued;
    their numbers.

    Its worker lost the database between the failure and the retry, for longer than Optuna's
    own retries of a write last (seconds): the trial would be lost, neither run nor run again.
    Call under the study's lock, as ``fail_and_retry`` writes under it: a failure seen without
    its retry is then never one whose retry is on its way. A trial retried ``max_retry`` times
    already is left (the callback queues nothing).
    """
    retry = _retry_callback(storage)
    if retry is None:
        return []
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    # Optuna's callback keeps max_retry private; read here so that a trial out of retries costs no reads at
    # every claim (its retry history and this failure must fit in max_retry, as the callback counts them).
    max_retry = getattr(retry, "_max_retry", None)
    lost = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(FAIL_REASON) in RETRIED_REASONS
            and t.number not in retried
            and (max_retry is None or len(t.system_attrs.get(RETRY_HISTORY, ())) + 1 <= max_retry)]
    queued = []
    for trial in lost:
        if _queue_retry(study, retry, trial):
            log.warning("trial %d was failed but never queued again (its worker lost the database); queued now",
                        trial.number)
            queued.append(trial.number)
    return queued


class LostRetries:
    """Queues the retries a lost database cut off (:func:`queue_lost_retries`), at most once per heartbeat interval.

    One instance per worker, asked under the study's lock before each claim. Not at every claim:
    a cut-off retry is rare, and a read of every trial of the study at every claim was part of a
    version that cost 4-12 % more storage time per trial (BENCHMARKS.md, "After setting aside
    trials made past the budget and queueing cut-off retries", 5cc007d); a lost trial waits one
    interval at most, as a stale one waits a grace period.
    Nothing with heartbeats off (no retries).
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def queue(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        now = time.monotonic()
        if not interval or (self._last is not None and now - self._last < interval):
            return []
        self._last = now
        return queue_lost_retries(study, storage)


def _retry_callback(storage: optuna.storages.BaseStorage):  # noqa: ANN202 - Optuna's callback class moved in 4.9
    return (getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback)()


def _retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of the trials some trial is a retry of (Optuna's ``retry_history`` of each retry)."""
    return {number for t in trials for number in t.system_attrs.get(RETRY_HISTORY, ())}


def _queue_retry(study: optuna.Study, retry: Callable[[optuna.Study, FrozenTrial], None], trial: FrozenTrial) -> bool:
    """Queue the retry of ``trial`` with Optuna's callback; False if it queued none (``max_retry`` reached).

    Told by the study's trial count: under the study's lock no other process adds a trial.
    """
    before = len(study.get_trials(deepcopy=False))
    copied = copy.deepcopy(trial)
    # The retry inherits the user attrs; the failure's reason and hand-backs belong to this attempt only.
    copied.user_attrs = {k: v for k, v in copied.user_attrs.items()
                         if k not in (FAIL_REASON, FAIL_MESSAGE, HANDED_BACK)}
    retry(study, copied)
    return len(study.get_trials(deepcopy=False)) > before
