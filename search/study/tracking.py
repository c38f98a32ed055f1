"""MLflow tracking: every trial of a study an MLflow run, in the experiment named after the study.

``cnnsearch run --mlflow [URI]`` records the tracking URI with the study (``StudySpec.mlflow``,
without a password), so every worker that runs a trial (local, Ray, ``cnnsearch worker`` on
another machine) logs that trial itself, with MLflow's own client: its params (the config as
built), per-epoch metrics (step = epoch), final metrics, its state and why it did not complete.
At the end of ``run`` the best trial's exported recipe becomes an artifact of its run.

A tracker that cannot be reached never stops the study: the first failure is warned once per
process, the trials it could not log are kept and tried again after the worker's next trial.
MLflow is imported only when a study asks for it (it costs seconds).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from optuna.trial import FrozenTrial, TrialState

from storage import mask_url
from storage.records import (
    CONFIG,
    CURVES,
    DEVICE,
    FAIL_MESSAGE,
    FAIL_REASON,
    HOST,
    LIVE_CURVE,
    METRICS,
    WORKER,
)

log = logging.getLogger(__name__)

DEFAULT_URI = "mlruns"
"""``--mlflow`` without a value: a local ``mlruns/`` directory in the working directory."""

TRIAL_TAG = "cnnsearch.trial"
"""The run's tag holding its trial number (how the best trial's run is found again)."""

RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}

_warned: set[str] = set()  # tracking URIs already warned about in this process: "warned once"


def tracking_uri(value: str) -> str:
    """``--mlflow``'s value as MLflow reads it from any directory.

    A path becomes an absolute ``file:`` URI, a relative SQLite file (``sqlite:///mlflow.db``) an
    absolute one: workers started in other directories log to the same store.
    """
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(value.removeprefix("sqlite:///")).expanduser().resolve())
    if "://" in value or value.split(":", 1)[0] in ("databricks", "file"):
        return value
    return Path(value).expanduser().resolve().as_uri()


def without_password(uri: str) -> tuple[str, str | None, str | None]:
    """``uri`` without the ``user:password@`` part, and that user and password, unescaped (None when absent).

    The study records the URI without them (its user attrs are shown by the dashboard); MLflow
    reads them from ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD``.
    """
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) or None


def use_credentials(uri: str) -> str:
    """Put a password written in ``uri`` where MLflow and this command's workers read it; return ``uri`` without it."""
    bare, user, password = without_password(uri)
    if user:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return bare


def study_tracker(uri: str | None, study_name: str, objective_metrics: list[str]) -> MlflowTracker | None:
    """The tracker of a study recorded with ``--mlflow`` (``uri``), or None."""
    return MlflowTracker(uri, study_name, objective_metrics) if uri else None


class MlflowTracker:
    """Logs the trials of one study to one MLflow tracking URI; never raises."""

    def __init__(self, uri: str, experiment: str, objective_metrics: list[str]) -> None:
        self.uri = uri
        self.experiment = experiment
        self.objective_metrics = objective_metrics
        self._client: Any = None
        self._experiment_id: str | None = None
        # Trials not logged yet (tried again after the next trial), by number: the trial and its run once created.
        self._pending: dict[int, tuple[FrozenTrial, str | None]] = {}

    @property
    def shown_uri(self) -> str:
        return mask_url(self.uri)

    def trial_ended(self, trial: FrozenTrial) -> None:
        """Log the finished ``trial``, and any earlier trial the tracker was down for."""
        self._pending[trial.number] = (trial, None)
        for number in list(self._pending):
            if self._attempt(lambda number=number: self._log_trial(number)) == "down":
                return
            del self._pending[number]  # logged, or refused (it would be refused again)

    def log_best_recipe(self, trial_number: int, export: Callable[[Path], Any]) -> bool:
        """Attach the recipe ``export(folder)`` writes to the run of trial ``trial_number``; whether it was."""
        def attach() -> None:
            client = self._connect()
            runs = client.search_runs([self._experiment()], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_number}'",
                                      max_results=1)
            if not runs:
                raise LookupError(f"no run of trial {trial_number} in experiment {self.experiment!r}")
            with tempfile.TemporaryDirectory() as folder:
                export(Path(folder))
                client.log_artifacts(runs[0].info.run_id, folder, artifact_path="recipe")
            client.set_tag(runs[0].info.run_id, "cnnsearch.best", "true")

        return self._attempt(attach) == "logged"

    def _attempt(self, action: Callable[[], None]) -> str:
        """Run ``action``: ``logged``, ``refused`` (a bad request, warned) or ``down`` (warned once per process)."""
        from mlflow.exceptions import MlflowException

        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a tracker that is down never stops the study
            reason = mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300]
            if isinstance(exc, MlflowException) and exc.error_code == "INVALID_PARAMETER_VALUE":
                log.warning("MLflow at %s refused a run: %s", self.shown_uri, reason)
                return "refused"
            level = logging.DEBUG if self.uri in _warned else logging.WARNING
            _warned.add(self.uri)
            log.log(level, "MLflow at %s cannot be reached (%s: %s); the study goes on, and trials are logged "
                    "there once it is back", self.shown_uri, type(exc).__name__, reason)
            return "down"
        return "logged"

    def _connect(self) -> Any:
        if self._client is None:
            # MLflow retries a request for minutes by default: a worker would stall after every trial while
            # the tracker is down. One try, a short timeout; what fails is tried again after the next trial.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            if self.uri.startswith("file:"):
                # MLflow 3 keeps its file store (the plain `mlruns/` folder) working only when asked to.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            client = self._connect()
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = client.create_experiment(self.experiment)
                except MlflowException:  # another worker created it meanwhile
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def _log_trial(self, number: int) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._connect()
        trial, run_id = self._pending[number]
        if run_id is None:  # created once: a retry after a failure half-way logs into the same run
            run = client.create_run(self._experiment(), start_time=_millis(trial.datetime_start),
                                    run_name=f"{self.experiment} #{number}", tags={TRIAL_TAG: str(number)})
            run_id = run.info.run_id
            self._pending[number] = (trial, run_id)
        now = _millis(trial.datetime_complete)
        metrics = [Metric(metric_name(key), value, now, step) for key, step, value in self._metric_points(trial)]
        params = [Param(key, str(value)[:6000]) for key, value in _params(trial).items()]
        tags = [RunTag(key, str(value)[:5000]) for key, value in _tags(self.experiment, trial).items()]
        for start in range(0, max(len(metrics), len(params), 1), 100):  # MLflow's limit: 100 params a call
            client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                             tags=tags if start == 0 else [])
        client.set_terminated(run_id, RUN_STATUS.get(trial.state, "FAILED"), end_time=now)

    def _metric_points(self, trial: FrozenTrial) -> list[tuple[str, int, float]]:
        """(metric, step, value): per-epoch curves (step = epoch), then the final metrics at the last epoch."""
        curves = trial.user_attrs.get(CURVES)
        if not curves:  # a pruned or failed trial: what it reported while it ran
            key = self.objective_metrics[0] if self.objective_metrics else "value"
            if trial.intermediate_values:
                curves = {key: [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]}
            else:
                curves = {"val_accuracy": list(trial.user_attrs.get(LIVE_CURVE) or [])}
        points = [(key, epoch, float(value)) for key, values in curves.items()
                  for epoch, value in enumerate(values, 1) if _is_number(value)]
        last = max((epoch for _, epoch, _ in points), default=0)
        final = {key: trial.user_attrs[key] for key in (*METRICS, *self.objective_metrics)
                 if key in trial.user_attrs and key not in curves}
        if trial.values:
            final.update(dict(zip(self.objective_metrics, trial.values, strict=False)))
        points += [(key, last, float(value)) for key, value in final.items()
                   if _is_number(value) and key not in curves]
        return points


def metric_name(key: str) -> str:
    """A metric's name in MLflow: a user's ``path/to/file.py:score`` as ``file.score`` (MLflow refuses paths)."""
    module, _, function = key.rpartition(":")
    if not module:
        return key
    return f"{Path(module).stem if module.endswith('.py') or '/' in module else module}.{function}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _params(trial: FrozenTrial) -> dict[str, Any]:
    """The config as built (every key, searched or fixed), else the sampled params of a trial that failed early."""
    return dict(trial.user_attrs.get(CONFIG) or trial.params)


def _tags(study_name: str, trial: FrozenTrial) -> dict[str, Any]:
    tags = {"cnnsearch.study": study_name, "cnnsearch.state": trial.state.name}
    for key in (FAIL_REASON, FAIL_MESSAGE, WORKER, HOST, DEVICE):
        if trial.user_attrs.get(key) is not None and (key not in (FAIL_REASON, FAIL_MESSAGE)
                                                      or trial.state != TrialState.COMPLETE):
            tags[f"cnnsearch.{key}"] = trial.user_attrs[key]
    return tags


def _millis(when: Any) -> int | None:
    return int(when.timestamp() * 1000) if when is not None else None
