"""Trials that go wrong are recorded with their reason and the study goes on (or stops, when it must)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import torch
from optuna.trial import TrialState

from search.cli import main
from tests.support.cli import CLI, clean_env, sigint_default
from tests.support.pg import PgCluster
from tests.support.workers import FAST_HEARTBEAT, SLOW_SPACE, Workers, make_study


def _space(workdir: Path, name: str, body: str) -> str:
    (workdir / name).write_text("params:\n" + body)
    return name


def _trials(workdir: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{workdir / 'cnnsearch.db'}").get_trials()


def _run(*args: str) -> int:
    return main(["run", "--dataset", "digits", "--no-progress", "--pruner", "none", *args])


def test_nan_loss_prunes_the_trial_with_its_reason_and_the_study_goes_on(workdir: Path) -> None:
    space = _space(workdir, "nan.yaml", "  lr: 10.0\n  optimizer: sgd\n  momentum: 0.99\n  batch_norm: false\n"
                                        "  epochs: 3\n  width: 8\n  depth: 1\n")
    assert _run("--study", "nan", "--space", space, "--trials", "2") == 0
    trials = _trials(workdir, "nan")
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs["fail_reason"] == "nan_loss" for t in trials)
    assert "loss" in trials[0].user_attrs["fail_message"]


def test_a_trial_over_its_time_limit_is_pruned_with_reason_timeout(workdir: Path) -> None:
    space = _space(workdir, "slow.yaml", "  epochs: 200\n  width: 8\n  depth: 1\n")
    assert _run("--study", "to", "--space", space, "--trials", "1", "--trial-timeout", "1") == 0
    (t,) = _trials(workdir, "to")
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["fail_reason"] == "timeout"
    assert len(t.intermediate_values) < 200


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 17970000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
], ids=["torch-oom", "cudnn", "cublas", "host", "memoryerror"])
def test_out_of_memory_is_recorded_so_the_sampler_learns(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         error: BaseException) -> None:
    import search.trial.train

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(search.trial.train, "_fit", no_memory)
    space = _space(workdir, "oom.yaml", "  width: {type: int, low: 4, high: 8}\n  epochs: 1\n")
    # Not failures: a study that stops after one failure goes on.
    assert _run("--study", "oom", "--space", space, "--trials", "2", "--max-failures", "1") == 0
    trials = _trials(workdir, "oom")
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2  # PRUNED: TPE ranks it below every success
    assert [t.user_attrs["fail_reason"] for t in trials] == ["oom", "oom"]
    assert trials[0].user_attrs["fail_message"].startswith("out of ")


def test_consecutive_failures_stop_the_study_with_the_last_reason(workdir: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # A pretrained backbone whose weights are not on this offline machine: every trial fails.
    space = _space(workdir, "fail.yaml", "  model: resnet18\n  pretrained: true\n  lr: {type: float, low: 0.001, "
                                         "high: 0.01}\n  epochs: 1\n")
    assert _run("--study", "f", "--space", space, "--trials", "6", "--max-failures", "2") == 1
    err = capsys.readouterr().err
    assert "2 trials failed in a row (--max-failures 2); last reason: ModelError" in err
    trials = _trials(workdir, "f")
    assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2
    assert all("weights" in t.user_attrs["fail_message"] for t in trials[:2])
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, says, state", [(signal.SIGINT, 130, "interrupted", TrialState.FAIL),
                                                      (signal.SIGTERM, 143, "SIGTERM", TrialState.WAITING)])
def test_a_signal_ends_the_running_trial_and_exits_nonzero(workdir: Path, signum: int, code: int, says: str,
                                                           state: TrialState) -> None:
    _space(workdir, "slow.yaml", "  epochs: 200\n  width: 16\n  depth: 1\n")
    db = workdir / "term.db"
    env = clean_env(CNNSEARCH_STORAGE=f"sqlite:///{db}")  # this checkout's code
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--study", "t", "--dataset", "digits",
                             "--space", "slow.yaml", "--trials", "2", "--no-progress"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if optuna.load_study(study_name="t", storage=env["CNNSEARCH_STORAGE"]).get_trials(
                        states=(TrialState.RUNNING,)):
                    break
            except (KeyError, sqlalchemy.exc.OperationalError):  # the run is still creating it
                pass
            time.sleep(0.5)
        else:
            pytest.fail("no trial started")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code
    assert says in err
    trials = optuna.load_study(study_name="t", storage=env["CNNSEARCH_STORAGE"]).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[0].state == state  # Ctrl-C: FAIL (and a retry queued); SIGTERM: handed back
    assert [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL] == \
        (["interrupted"] if state == TrialState.FAIL else [])


# --- hostile storage conditions (issue 21) ----------------------------------------------------------

FAST = "  lr: {type: float, low: 0.003, high: 0.03, log: true}\n  width: 4\n  depth: 1\n  epochs: 1\n" \
       "  batch_size: 256\n"


def _cli(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], cwd=workdir, env=env or clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("command", [["status", "--study", "s"], ["best", "--study", "s"], ["studies"],
                                     ["report", "--study", "s"], ["export", "--study", "s", "--out", "out"],
                                     ["worker", "--study", "s"], ["worker", "--study", "s", "--backend", "ray"]])
def test_read_only_commands_and_workers_never_create_a_database(workdir: Path, capsys: pytest.CaptureFixture,
                                                    command: list[str]) -> None:
    assert main([*command, "--storage", "sqlite:///typo.db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnsearch: error: no such database file: ") and str(workdir / "typo.db") in err
    assert "\n" not in err
    assert not (workdir / "typo.db").exists()


def test_the_dashboard_never_creates_a_database(workdir: Path) -> None:
    from search.cli.dashboard import dashboard_server
    from storage import StorageError

    with pytest.raises(StorageError, match="no such database file"):
        server, _ = dashboard_server("sqlite:///typo.db", port=0)
        server.server_close()
    assert not (workdir / "typo.db").exists()


def test_a_heartbeat_grace_within_the_interval_is_refused_before_anything_is_created(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("CNNSEARCH_HEARTBEAT_GRACE", "2")
    assert _run("--study", "g", "--space", _space(workdir, "fast.yaml", FAST), "--trials", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "$CNNSEARCH_HEARTBEAT_GRACE=2" in err and "10 s" in err and "\n" not in err
    assert not (workdir / "cnnsearch.db").exists()


@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize(("name", "value"), [("CNNSEARCH_WORKER_MEMORY_MB", "8GB"),
                                             ("CNNSEARCH_DATA_MEMORY_MB", "nan")])
def test_a_bad_memory_setting_is_refused_before_anything_is_created(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str, name: str,
        value: str) -> None:
    monkeypatch.setenv(name, value)
    args = ["--study", "g", "--dataset", "digits", "--trials", "1"] if command == "run" else ["--study", "g"]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert f"${name}={value!r} is not a positive number of megabytes" in err and "\n" not in err, err
    assert not (workdir / "cnnsearch.db").exists()


def test_a_sqlite_database_locked_by_another_process_is_one_line_and_exit_2(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    space = _space(workdir, "fast.yaml", FAST)
    optuna.create_study(study_name="other", storage=f"sqlite:///{workdir / 'cnnsearch.db'}")
    monkeypatch.setattr("storage.engine.SQLITE_BUSY_TIMEOUT_S", 1)  # 60 s by default
    holder = sqlite3.connect(workdir / "cnnsearch.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert _run("--study", "l", "--space", space, "--trials", "1") == 2
    finally:
        holder.close()
    err = capsys.readouterr().err.strip()
    assert "database is locked by another process" in err
    assert "\n" not in err and "max length" not in err


def test_a_read_only_database_is_one_line_and_exit_2(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    space = _space(workdir, "fast.yaml", FAST)
    db = workdir / "cnnsearch.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    with _read_only(db):
        assert _run("--study", "r", "--space", space, "--trials", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "read-only" in err and str(db) in err
    assert "\n" not in err and "max length" not in err


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """``path`` unwritable, even for root (the immutable flag) as for anyone else (its mode)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_runs_of_one_study_started_at_once_share_its_budget(workdir: Path, request: pytest.FixtureRequest,
                                                                backend: str) -> None:
    url = f"sqlite:///{workdir / 'cnnsearch.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    name = f"d2-{uuid.uuid4().hex[:8]}"
    _space(workdir, "fast.yaml", FAST)
    args = ["run", "--study", name, "--storage", url, "--dataset", "digits", "--space", "fast.yaml", "--trials", "4",
            "--no-progress", "--pruner", "none", "--device", "cpu"]
    runs = [_cli(workdir, *args) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert len(trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_a_huge_budget_with_a_timeout_trains_instead_of_enqueueing(workdir: Path) -> None:
    space = _space(workdir, "fast.yaml", FAST)
    # --timeout counts from the start: set-up (torch, the data, the study) on a busy machine takes seconds.
    assert _run("--study", "big", "--space", space, "--trials", "100000", "--timeout", "15") == 0
    trials = _trials(workdir, "big")
    assert any(t.state == TrialState.COMPLETE for t in trials)
    assert not [t for t in trials if t.state == TrialState.WAITING]


def test_the_timeout_counts_the_set_up_too(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    import search.study.local

    load = search.study.local.load_study_data

    def slow_load(*args, **kwargs):  # a large dataset's decoding takes longer than the whole --timeout
        time.sleep(3)
        return load(*args, **kwargs)

    monkeypatch.setattr(search.study.local, "load_study_data", slow_load)
    space = _space(workdir, "fast.yaml", FAST)
    assert _run("--study", "slow", "--space", space, "--trials", "5", "--timeout", "2") == 0
    assert not [t for t in _trials(workdir, "slow") if t.state != TrialState.WAITING]
    assert "the --timeout of 2 s was spent before a trial could start" in capsys.readouterr().out


@pytest.mark.slow
def test_a_trial_handed_back_on_sigterm_is_finished_without_spending_the_budget(workdir: Path) -> None:
    _space(workdir, "slow.yaml", "  epochs: 200\n  width: 16\n  depth: 1\n")
    db = workdir / "term.db"
    env = clean_env(CNNSEARCH_STORAGE=f"sqlite:///{db}")
    args = ["run", "--study", "t", "--dataset", "digits", "--space", "slow.yaml", "--trials", "2", "--no-progress",
            "--device", "cpu"]
    proc = _cli(workdir, *args, env=env)
    try:
        _wait_for_a_running_trial(env["CNNSEARCH_STORAGE"], "t")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143

    (interrupted,) = optuna.load_study(study_name="t", storage=env["CNNSEARCH_STORAGE"]).get_trials()
    assert interrupted.state == TrialState.WAITING

    # Resumed: the handed-back trial runs again, and the budget of 2 is still whole.
    resumed = _cli(workdir, *args, "--trial-timeout", "1", env=env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    trials = optuna.load_study(study_name="t", storage=env["CNNSEARCH_STORAGE"]).get_trials()
    assert [t.state for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    assert len(trials) == 2 and trials[0].number == interrupted.number


def _wait_for_a_running_trial(url: str, study: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name=study, storage=url).get_trials(states=(TrialState.RUNNING,))
            if running and running[0].intermediate_values:
                return running[0]
        except (KeyError, sqlalchemy.exc.OperationalError):  # the run is still creating it
            pass
        time.sleep(0.5)
    pytest.fail("no trial started")


@pytest.mark.slow
def test_the_trial_of_a_killed_worker_is_failed_with_its_reason_and_retried(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{workdir / 'killed.db'}"
    make_study(url, "k", SLOW_SPACE, budget=1)
    env = clean_env(**FAST_HEARTBEAT)
    victim = _cli(workdir, "worker", "--study", "k", "--storage", url, "--device", "cpu", "--threads", "1", env=env)
    try:
        _wait_for_a_running_trial(url, "k")
    finally:
        victim.kill()
        victim.communicate()
    for key, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(key, value)
    time.sleep(3)  # past the grace period: the next worker finds the trial stale

    assert main(["worker", "--study", "k", "--storage", url, "--device", "cpu", "--threads", "1"]) == 0
    trials = optuna.load_study(study_name="k", storage=url).get_trials()
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["fail_reason"] == "interrupted"
    assert "heartbeat" in dead.user_attrs["fail_message"]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE
    assert "fail_reason" not in retry.user_attrs


@pytest.mark.postgres
def test_a_database_restart_mid_study_is_one_log_line_and_every_failed_trial_says_why(
        pg_cluster: PgCluster, workers: Workers) -> None:
    url = pg_cluster.url
    name = f"restart-{uuid.uuid4().hex[:8]}"
    make_study(url, name, SLOW_SPACE, budget=2)
    procs = [workers.start(name), workers.start(name)]
    _wait_for_a_running_trial(url, name)

    pg_cluster.restart()  # both workers are mid-trial: their connections die

    logs = [workers.wait(proc, timeout=300) for proc in procs]
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert all(t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL)
    for log in logs:
        assert "Traceback" not in log and "max length" not in log, log
