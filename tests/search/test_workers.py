"""Several `cnnsearch worker` processes on one study in a real PostgreSQL server.

Workers are started the way a colleague would start them by hand (a subprocess each, the
password in ``PGPASSWORD``), with a 1 s heartbeat so that a dead worker is noticed in 3 s
(:mod:`tests.support.workers`).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.cli import main
from storage.heartbeat import heartbeat_settings
from tests.support.pg import PgCluster
from tests.support.workers import (
    FAST_SPACE,
    GRID_SPACE,
    SLOW_SPACE,
    Workers,
    make_study,
    status_json,
    study_name,
    trials_of,
    wait_for,
)

pytestmark = pytest.mark.postgres


def test_killed_worker_trial_fails_is_retried_and_survivors_finish_the_budget(
    pg_url: str, workers: Workers
) -> None:
    name = study_name()
    make_study(pg_url, name, SLOW_SPACE, budget=2)
    victim, survivor = workers.start(name), workers.start(name)

    def victim_trained_an_epoch() -> bool:
        return any(t.user_attrs.get("pid") == victim.pid and t.intermediate_values
                   for t in trials_of(pg_url, name, TrialState.RUNNING))

    wait_for(victim_trained_an_epoch, 180, "the victim's first epoch")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    workers.wait(survivor, timeout=90)

    trials = trials_of(pg_url, name)
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["pid"] == victim.pid
    (retry,) = [t for t in trials if "failed_trial" in t.system_attrs]
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.params == dead.params
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["pid"] == survivor.pid
    # The budget of 2 is met by the survivor; the retry stands in for the killed trial.
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert len(trials) == 3


def test_study_survives_postgres_restart_while_workers_run(pg_cluster: PgCluster, workers: Workers) -> None:
    url = pg_cluster.url
    name = study_name()
    make_study(url, name, FAST_SPACE, budget=8)
    procs = [workers.start(name), workers.start(name)]
    wait_for(lambda: len(trials_of(url, name, TrialState.COMPLETE)) >= 2, 180, "two completed trials")

    pg_cluster.restart()  # both workers are mid-study: their connections die

    for proc in procs:
        workers.wait(proc, timeout=90)
    trials = trials_of(url, name)
    # A trial made past the budget as the server restarted is set aside unrun, out of the count.
    set_aside = [t for t in trials if t.user_attrs.get("fail_reason") == "over_budget"]
    assert all(t.state == TrialState.FAIL and not t.params for t in set_aside)
    originals = [t for t in trials if "failed_trial" not in t.system_attrs and t not in set_aside]
    assert len(originals) == 8
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 8
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # A trial the restart broke is failed and retried, never dropped.
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    assert {t.number for t in trials if t.state == TrialState.FAIL and t not in set_aside} <= retried


def test_grid_points_run_exactly_once_across_workers_one_joining_late(
    pg_url: str, workers: Workers, capsys: pytest.CaptureFixture
) -> None:
    name = study_name()
    make_study(pg_url, name, GRID_SPACE, budget=None, sampler="grid")
    # The first two stop after 2 points each, so the late worker surely finds points left.
    first = [workers.start(name, "--trials", "2"), workers.start(name, "--trials", "2")]
    wait_for(lambda: bool(trials_of(pg_url, name, TrialState.COMPLETE)), 180, "a completed grid point")
    late = workers.start(name)
    for proc in [*first, late]:
        workers.wait(proc, timeout=90)

    trials = trials_of(pg_url, name)
    points = Counter((t.params["lr"], t.params["width"], t.params["batch_norm"]) for t in trials)
    assert sorted(points) == sorted((lr, w, bn) for lr in (0.003, 0.03) for w in (4, 6) for bn in (False, True))
    assert set(points.values()) == {1}
    assert all(t.state == TrialState.COMPLETE for t in trials)
    by_pid = Counter(t.user_attrs["pid"] for t in trials)
    assert by_pid[first[0].pid] == by_pid[first[1].pid] == 2
    assert by_pid[late.pid] == 4

    listed = status_json(pg_url, name, capsys)["workers"]
    assert sorted(w["pid"] for w in listed) == sorted(p.pid for p in [*first, late])
    for worker in listed:
        assert worker["host"] == socket.gethostname() and worker["device"] == "cpu"
        assert worker["trials"] == {"COMPLETE": by_pid[worker["pid"]]} and worker["running"] is None
        assert dt.datetime.fromisoformat(worker["last_heartbeat"]) <= dt.datetime.now()
        assert 0 <= worker["heartbeat_age_s"] < 120


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, {"heartbeat_interval": 10, "grace_period": None}),
        ({"CNNSEARCH_HEARTBEAT_INTERVAL": "2", "CNNSEARCH_HEARTBEAT_GRACE": "5"},
         {"heartbeat_interval": 2, "grace_period": 5}),
        ({"CNNSEARCH_HEARTBEAT_INTERVAL": "0"}, {"heartbeat_interval": None, "grace_period": None}),
    ],
)
def test_heartbeat_settings_come_from_the_environment(env: dict[str, str], expected: dict) -> None:
    assert heartbeat_settings(env) == expected


def test_bad_heartbeat_setting_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("CNNSEARCH_HEARTBEAT_INTERVAL", "soon")
    assert main(["worker", "--study", "x", "--storage", f"sqlite:///{tmp_path / 'h.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cnnsearch: error: $CNNSEARCH_HEARTBEAT_INTERVAL='soon' is not a number of seconds; "
                   "use a whole number like 10 (0: off)")
