"""`cnnsearch dashboard` and the study note, as a user watching a running study sees them.

The live test runs a real study (`cnnsearch run`) and the dashboard (`cnnsearch dashboard`) as
two processes on one SQLite file, like two terminals, and reads optuna-dashboard's HTTP API
while trials are still running.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note

from reports import notes
from reports.notes import NOTE_MAX_CHARS, refresh_study_note
from search.cli import main
from storage import artifact_store_for, open_storage
from tests.support.cli import CLI, Dashboard, clean_env
from tests.support.pg import free_port

METRICS = {"val_accuracy", "params", "flops", "latency_ms", "train_seconds", "device", "host", "config"}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def _attrs(serialized: list[dict[str, str]]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in serialized}


@pytest.mark.slow
def test_live_study_shows_trials_curves_metrics_and_note_while_running(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cnnsearch.db'}"
    open_storage(url)  # the tables exist before two processes open the file at once
    port = free_port()
    dashboard = Dashboard(tmp_path, "--port", str(port))  # no --storage: the same default file as `run`
    # The dashboard is up before the study starts, and the budget outlasts the test (which stops the
    # study at its end): 6 tiny trials on digits took 4 s in all and once ended before the first poll.
    run = subprocess.Popen([*CLI, "run", "--study", "live", "--dataset", "mnist5k", "--space", "tiny",
                            "--trials", "40", "--keep-checkpoints", "--no-progress"], cwd=tmp_path, env=clean_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert dashboard.first_line == f"dashboard: http://127.0.0.1:{port}/dashboard (storage: sqlite:///cnnsearch.db)"
        study_id, detail = _poll_until_complete_and_running(dashboard.url, run)

        study_attrs = _attrs(detail["user_attrs"])
        assert study_attrs["dataset"] == "mnist5k"
        assert study_attrs["space_name"] == "tiny"
        assert json.loads(study_attrs["objectives"]) == ["accuracy"]
        done = [t for t in detail["trials"] if t["state"] == "Complete"]
        running = [t for t in detail["trials"] if t["state"] == "Running"]
        assert done and running
        for trial in done:
            epochs = int(_attrs(trial["user_attrs"])["epochs_run"])
            assert [v["step"] for v in trial["intermediate_values"]] == list(range(1, epochs + 1))
            assert METRICS <= set(_attrs(trial["user_attrs"]))
            assert json.loads(_attrs(trial["user_attrs"])["config"])["seed"] == trial["number"]
        assert {"worker", "host", "device"} <= set(_attrs(running[0]["user_attrs"]))
        assert detail["has_intermediate_values"]

        best = detail["best_trials"][0]
        assert best["number"] in {t["number"] for t in done}
        assert f"Best so far: trial {best['number']}, accuracy" in detail["note"]["body"]
        assert f"| val accuracy | {float(_attrs(best['user_attrs'])['val_accuracy']):.4g} |" in detail["note"]["body"]

        # The checkpoint a worker kept is listed on its trial and served from the study's artifact store.
        checkpoint = best["artifacts"][0]
        served = _get(f"{dashboard.url}/artifacts/{study_id}/{best['trial_id']}/{checkpoint['artifact_id']}")
        with artifact_store_for(url).open_reader(checkpoint["artifact_id"]) as stored:
            assert served == stored.read() and len(served) > 1000
        rc, out, err = dashboard.stop()
        assert (rc, out.strip().splitlines()[-1]) == (0, "dashboard stopped"), err
        assert "Traceback" not in err
    finally:
        dashboard.kill()
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)


def _poll_until_complete_and_running(base: str, run: subprocess.Popen) -> tuple[int, dict[str, Any]]:
    """Study id and detail, once a trial completed (and the note names the best) while another one runs."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        assert run.poll() is None, f"the study ended before it was seen running: {run.communicate()[0]}"
        studies = _get(f"{base}/api/studies")["study_summaries"]
        if studies:
            study_id = studies[0]["study_id"]
            detail = _get(f"{base}/api/studies/{study_id}")
            # A trial is seen between its steps (claimed before its worker is recorded, told COMPLETE
            # before the note is rewritten): wait for a snapshot where each step is done.
            started = [t for t in detail["trials"] if t["state"] == "Running"
                       and "device" in _attrs(t["user_attrs"])]
            best = detail["best_trials"]
            if started and best and f"trial {best[0]['number']}," in detail["note"]["body"]:
                return study_id, detail
        time.sleep(0.5)
    raise AssertionError("no trial completed within 150 s")


@pytest.mark.postgres
def test_dashboard_on_postgres_from_env_never_prints_the_password(tmp_path: Path, pg_url: str) -> None:
    password = pg_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    optuna.create_study(study_name="team", storage=open_storage(pg_url))
    dashboard = Dashboard(tmp_path, "--port", "0", env=clean_env(CNNSEARCH_STORAGE=pg_url,
                                                               CNNSEARCH_ARTIFACTS=str(tmp_path / "art")))
    try:
        assert dashboard.first_line.startswith("dashboard: http://127.0.0.1:")
        assert "(storage: postgresql+psycopg://cnn:***@127.0.0.1:" in dashboard.first_line
        names = [s["study_name"] for s in _get(f"{dashboard.url}/api/studies")["study_summaries"]]
        assert "team" in names
        rc, out, err = dashboard.stop()
        assert rc == 0
        assert password not in dashboard.first_line + out + err
    finally:
        dashboard.kill()


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    open_storage(f"sqlite:///{tmp_path / 's.db'}")  # the dashboard only opens a database a run created
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (f"cnnsearch: error: --port {port}: port {port} on 127.0.0.1 is already in use "
                   "(another dashboard?); choose a free one with --port, or --port 0 for any\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "--port must be between 0 and 65535 (0: any free port), got 70000"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is not an IPv4 address or name"),
    (["--storage", "mysql://u:hunter2@db/x"], "storage URL 'mysql://u:***@db/x' has unsupported scheme"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], args: list[str],
                                           message: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    open_storage(f"sqlite:///{tmp_path / 'cnnsearch.db'}")  # the default database, as a run leaves it
    assert main(["dashboard", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnsearch: error: {message}") and err.count("\n") == 1
    assert "hunter2" not in err


# --- the study note ------------------------------------------------------------------------------

def _study(tmp_path: Path, directions: list[str]) -> optuna.Study:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'n.db'}", heartbeat_interval=None),
                                study_name="n", directions=directions)
    study.set_user_attr("dataset", "digits")
    study.set_user_attr("space_name", "tiny")
    study.set_user_attr("objectives", ["accuracy", "latency"][: len(directions)])
    return study


def _finish(study: optuna.Study, values: list[float], **metrics: Any) -> int:
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                       "width": optuna.distributions.IntDistribution(4, 64)})
    for key, value in {"val_accuracy": values[0], "params": 1234, "latency_ms": 0.5, "device": "cpu",
                       "host": "box", **metrics}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, values)
    return trial.number


def test_note_follows_the_best_trial_only(tmp_path: Path) -> None:
    study = _study(tmp_path, ["maximize"])
    first = _finish(study, [0.80])
    assert refresh_study_note(study, first)
    worse = _finish(study, [0.70])
    assert not refresh_study_note(study, worse)
    assert get_note(study).startswith(f"### Best so far: trial {first}, accuracy 0.8\n")
    better = _finish(study, [0.90], params=99)
    assert refresh_study_note(study, better)
    note = get_note(study)
    assert note.startswith(f"### Best so far: trial {better}, accuracy 0.9\n")
    assert "| parameters | 99 |" in note and "| device | cpu on box |" in note
    assert f"| width | {study.trials[better].params['width']} |" in note


def test_note_lists_the_pareto_front(tmp_path: Path) -> None:
    study = _study(tmp_path, ["maximize", "minimize"])
    fast = _finish(study, [0.80, 0.1])
    refresh_study_note(study, fast)
    dominated = _finish(study, [0.70, 0.2])
    assert not refresh_study_note(study, dominated)
    accurate = _finish(study, [0.95, 0.9])
    assert refresh_study_note(study, accurate)
    note = get_note(study)
    assert note.startswith("### Pareto front: 2 trials")
    rows = [line for line in note.splitlines() if line.startswith(f"| {fast} |") or line.startswith(f"| {accurate} |")]
    assert len(rows) == 2 and f"| {dominated} |" not in note


def test_note_fits_one_dashboard_chunk_for_a_large_space(tmp_path: Path) -> None:
    study = _study(tmp_path, ["maximize"])
    dists = {f"a_rather_long_parameter_name_{i}": optuna.distributions.FloatDistribution(0, 1) for i in range(60)}
    trial = study.ask(dists)
    study.tell(trial, 0.5)
    assert refresh_study_note(study, trial.number)
    note = get_note(study)
    assert len(note) <= NOTE_MAX_CHARS
    assert note.startswith(f"### Best so far: trial {trial.number}, accuracy 0.5")


def test_a_note_that_cannot_be_written_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    study = _study(tmp_path, ["maximize"])
    number = _finish(study, [0.8])

    def database_gone(*args: Any) -> None:
        raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")

    monkeypatch.setattr(study._storage, "set_study_system_attr", database_gone)
    with caplog.at_level(logging.WARNING, logger="reports.notes"):
        assert refresh_study_note(study, number) is False
    assert "could not update the dashboard note of study 'n' after trial 0: server closed" in caplog.text
    assert study.trials[number].state == TrialState.COMPLETE


def test_without_optuna_dashboard_a_process_warns_once_and_its_trials_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # the first GPU machine ran studies without optuna-dashboard: every new best logged the same warning
    study = _study(tmp_path, ["maximize"])
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # `import optuna_dashboard` raises ImportError
    notes._dashboard_save_note.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="reports.notes"):
            results = [refresh_study_note(study, _finish(study, [value])) for value in (0.7, 0.8, 0.9)]
    finally:
        notes._dashboard_save_note.cache_clear()
    assert results == [False, False, False]
    warnings = [r.getMessage() for r in caplog.records if r.name == "reports.notes"]
    assert len(warnings) == 1 and warnings[0].startswith("optuna-dashboard is not installed")
    assert "pip install optuna-dashboard" in warnings[0]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert get_note(study) == ""


def test_note_shows_the_built_values_and_the_builders_notes(tmp_path: Path) -> None:
    study = _study(tmp_path, ["maximize"])
    study.enqueue_trial({"depth": 4})
    trial = study.ask({"depth": optuna.distributions.IntDistribution(1, 4)})
    clamped = "depth 4 clamped to 2: the 8x8 input holds 2 downsampling stages"
    for key, value in {"config": {"depth": 2}, "val_accuracy": 0.9, "notes": [clamped]}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 0.9)
    assert refresh_study_note(study, trial.number)
    note = get_note(study)
    assert "| depth | 2 (asked 4) |" in note and clamped in note
