"""`cnnsearch run --mlflow`: every trial an MLflow run, read back with MLflow's own client.

A local file store and a real `mlflow server` on 127.0.0.1 hold one run per trial with its
per-epoch metrics; a worker that joins later logs to the same experiment; a tracker that is
down never stops the study and is warned about once, its password never shown.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from tests.support.studies import QUICK_LR_SPACE

FAILS_ONCE = """
import os

def score(y_true, logits):
    if not os.path.exists("failed-once"):
        open("failed-once", "w").close()
        raise ValueError("cannot score this one")
    return float((logits.argmax(1) == y_true).mean())
"""


@pytest.fixture
def workdir(workdir: Path) -> Path:
    (workdir / "quick.yaml").write_text(QUICK_LR_SPACE)
    (workdir / "mine.py").write_text(FAILS_ONCE)
    return workdir


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's settings the tracker changes in this process, put back afterwards."""
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens a file store only when told to


def _run(study: str, *args: str) -> int:
    return main(["run", "--study", study, "--dataset", "digits", "--space", "quick.yaml", "--no-progress",
                 "--sampler", "random", "--pruner", "none", *args])


def _study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'cnnsearch.db'}")


def _runs(uri: str, experiment: str) -> dict[int, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id])
    return {int(r.data.tags["cnnsearch.trial"]): r for r in runs}


def _history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, metric)]


@pytest.mark.slow
def test_a_file_store_holds_one_run_per_trial_with_its_epochs_state_and_the_best_recipe(
        workdir: Path, client_env: None, capsys: pytest.CaptureFixture) -> None:
    assert _run("tracked", "--trials", "3", "--objectives", "mine.py:score:max", "--mlflow") == 0
    out = capsys.readouterr().out
    uri = (workdir / "mlruns").as_uri()
    assert f"MLflow: experiment 'tracked' at {uri}" in out
    study = _study(workdir, "tracked")
    assert study.user_attrs["mlflow"] == uri  # what a joining worker reads
    trials = study.get_trials()
    runs = _runs(uri, "tracked")
    assert sorted(runs) == [t.number for t in trials] == [0, 1, 2]
    failed, *done = trials
    assert failed.state == TrialState.FAIL and [t.state for t in done] == [TrialState.COMPLETE] * 2
    bad = runs[0]
    assert bad.info.status == "FAILED" and bad.data.tags["cnnsearch.state"] == "FAIL"
    assert bad.data.tags["cnnsearch.fail_message"] == failed.user_attrs["fail_message"]
    for t in done:
        run = runs[t.number]
        assert run.info.status == "FINISHED" and run.data.params["lr"] == str(t.params["lr"])
        curves = t.user_attrs["curves"]
        for metric in ("val_accuracy", "val_loss", "train_loss"):
            assert _history(uri, run.info.run_id, metric) == list(enumerate(curves[metric], 1))
        # The user's score (a file's function) under the file's name and the function's.
        assert _history(uri, run.info.run_id, "mine.score") == list(enumerate(curves[f"{workdir}/mine.py:score"], 1))
        assert run.data.metrics["params"] == t.user_attrs["params"]
    best = study.best_trial.number
    from mlflow import MlflowClient

    recipe = [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(runs[best].info.run_id, "recipe")]
    assert "recipe/recipe.yaml" in recipe and runs[best].data.tags["cnnsearch.best"] == "true"

    # A worker joining later logs its trials to the same experiment, without being told where.
    study.set_user_attr("budget", 4)
    assert main(["worker", "--study", "tracked"]) == 0
    assert sorted(_runs(uri, "tracked")) == [0, 1, 2, 3]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_tracker_that_is_down_never_stops_the_study_and_is_warned_about_once(
        workdir: Path, client_env: None, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"http://alice:s3cret-pw@127.0.0.1:{_closed_port()}"
    with caplog.at_level(logging.WARNING):
        assert _run("down", "--trials", "3", "--mlflow", uri) == 0
    out = capsys.readouterr()
    study = _study(workdir, "down")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    warned = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warned) == 1 and "cannot be reached" in warned[0] and "the study goes on" in warned[0]
    shown = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret-pw" not in shown and "MLflow: experiment" not in shown
    assert "s3cret-pw" not in str(study.user_attrs)  # the dashboard shows these
    assert study.user_attrs["mlflow"].startswith("http://127.0.0.1:")


def _free_port() -> int:
    return _closed_port()


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend); skipped if it does not answer within 90 s.

    It creates its database first: 58 s on a 2-core machine under load 12, far less on a quiet one.
    """
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                              env={**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"mlflow server did not answer within 90 s (see {folder / 'server.log'})")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.slow
def test_a_real_mlflow_server_holds_one_run_per_trial_with_its_epochs(
        workdir: Path, client_env: None, mlflow_server: str) -> None:
    assert _run("served", "--trials", "2", "--mlflow", mlflow_server) == 0
    trials = _study(workdir, "served").get_trials()
    runs = _runs(mlflow_server, "served")
    assert sorted(runs) == [t.number for t in trials] == [0, 1]
    for t in trials:
        assert _history(mlflow_server, runs[t.number].info.run_id, "val_accuracy") == list(
            enumerate(t.user_attrs["curves"]["val_accuracy"], 1))
