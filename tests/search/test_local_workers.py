"""`cnnsearch run --jobs N`: worker processes supervised by the run, on this machine.

A worker killed mid-trial (the OOM killer, ``kill -9``) is noticed by the run, its trial failed
and retried by the others; workers end with the run when it is killed; each worker gets its
device and its share of the CPU cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState

import search.study.local
from search.study.local import plan_workers, run_study
from search.study.spec import StudySpec
from spaces import parse_space
from storage import open_storage
from tests.support.cli import clean_env
from tests.support.workers import SLOW_SPACE, wait_for


@pytest.fixture
def workdir(workdir: Path) -> Path:
    """The shared working directory (tests/conftest.py) with a space of slow trials in it."""
    (workdir / "slow.yaml").write_text(yaml.safe_dump(SLOW_SPACE))
    return workdir


def _start_run(workdir: Path, study: str, trials: int, log: Path) -> subprocess.Popen:
    """`cnnsearch run --jobs 2` as a user starts it; heartbeats at their defaults (10 s, grace 30 s)."""
    env = clean_env(CNNSEARCH_STORAGE=f"sqlite:///{workdir / 'cnnsearch.db'}")  # this checkout's code
    for name in ("CNNSEARCH_HEARTBEAT_INTERVAL", "CNNSEARCH_HEARTBEAT_GRACE"):
        env.pop(name, None)
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "search.cli", "run", "--study", study, "--dataset", "digits", "--space",
             "slow.yaml", "--pruner", "none", "--sampler", "random", "--trials", str(trials), "--jobs", "2",
             "--device", "cpu", "--no-progress"],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _trials(workdir: Path, study: str, *states: TrialState) -> list[FrozenTrial]:
    storage = open_storage(f"sqlite:///{workdir / 'cnnsearch.db'}", heartbeat_interval=None)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(states=states or None)
    except KeyError:  # not created yet
        return []


def _training(workdir: Path, study: str, run: subprocess.Popen) -> dict[int, FrozenTrial]:
    """The running trials that have trained an epoch, by the pid of their worker process."""
    return {t.user_attrs["pid"]: t for t in _trials(workdir, study, TrialState.RUNNING)
            if t.intermediate_values and t.user_attrs.get("pid") != run.pid}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_killed_mid_trial_is_noticed_and_the_others_finish_the_budget(workdir: Path) -> None:
    run = _start_run(workdir, "k9", 3, workdir / "run.log")
    try:
        wait_for(lambda: len(_training(workdir, "k9", run)) == 2, 240, "both workers training")
        victim, killed = next(iter(_training(workdir, "k9", run).items()))
        os.kill(victim, signal.SIGKILL)
        # Well inside the heartbeat's grace period (30 s): only the run itself can have noticed.
        run.wait(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    output = (workdir / "run.log").read_text()
    assert run.returncode == 0, output
    assert any(f":{victim}" in line and "killed by SIGKILL" in line for line in output.splitlines()), output

    trials = _trials(workdir, "k9")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3  # the whole budget
    dead = next(t for t in trials if t.number == killed.number)
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"] == "interrupted"
    assert f"pid {victim}" in dead.user_attrs["fail_message"] and "SIGKILL" in dead.user_attrs["fail_message"]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["pid"] != victim


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_a_run_hands_back_the_trials_of_all_its_workers(workdir: Path) -> None:
    run = _start_run(workdir, "preempted", 6, workdir / "run.log")
    training: dict[int, FrozenTrial] = {}
    try:
        def both_training() -> bool:
            training.clear()
            training.update(_training(workdir, "preempted", run))
            return len(training) == 2

        wait_for(both_training, 240, "both workers training")
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
    output = (workdir / "run.log").read_text()
    assert run.returncode == 143, output
    assert "handed back to the study (waiting)" in output
    trials = _trials(workdir, "preempted")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    handed_back = {t.number for t in trials if t.state == TrialState.WAITING}
    assert {t.number for t in training.values()} <= handed_back  # the same trials, no retry copies
    assert not [t for t in trials if "failed_trial" in t.system_attrs]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_with_a_killed_run_and_leave_nothing_running(workdir: Path) -> None:
    run = _start_run(workdir, "orphans", 6, workdir / "run.log")
    workers: list[int] = []
    try:
        def both_training() -> bool:
            workers[:] = _training(workdir, "orphans", run)
            return len(workers) == 2

        wait_for(both_training, 240, "both workers training")
        run.kill()
        run.wait()
        wait_for(lambda: not any(_alive(pid) for pid in workers), 30, "the workers to end with the run")
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    trials = _trials(workdir, "orphans")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    stopped = [t for t in trials if t.state == TrialState.WAITING]  # handed back, for the next run to finish
    assert stopped and {t.user_attrs["pid"] for t in stopped} <= set(workers)
    assert all(t.user_attrs["handed_back"] == 1 for t in stopped)
    assert sum(t.state == TrialState.COMPLETE for t in trials) < 6  # they did not finish the study alone


@pytest.mark.parametrize(
    "jobs, device, gpus, cores, expected",
    [
        (2, "cpu", 0, 16, [("cpu", 8), ("cpu", 8)]),
        (4, "auto", 2, 16, [("cuda:0", 4), ("cuda:1", 4), ("cuda:0", 4), ("cuda:1", 4)]),
        (2, "cuda", 1, 2, [("cuda:0", 1), ("cuda:0", 1)]),  # GPU workers split the cores too
        (3, "auto", 4, 2, [("cuda:0", 1), ("cuda:1", 1), ("cuda:2", 1)]),  # at least one thread each
        (2, "cuda:1", 0, 8, [("cuda:1", 4), ("cuda:1", 4)]),
    ],
)
def test_local_workers_take_the_gpus_in_turn_and_split_the_cpu_cores(
    jobs: int, device: str, gpus: int, cores: int, expected: list[tuple[str, int]]
) -> None:
    assert plan_workers(jobs, device, gpus=gpus, cores=cores) == expected


class _Pinned(Exception):
    """Raised by the test's pin_memory: the run got as far as pinning the data."""


def test_one_job_sets_its_gpu_before_pinning_the_data(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinning memory makes a CUDA context on the current GPU: with ``--device cuda:1`` that must be GPU 1."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(f"set_device {device}"))

    def prepare_data(*args: object, **kwargs: object) -> None:  # pins the images on a GPU
        calls.append("prepare_data")
        raise _Pinned

    monkeypatch.setattr(search.study.local, "prepare_data", prepare_data)
    # No GPU here: the device is taken as given.
    monkeypatch.setattr(search.study.local, "resolve_device", lambda device, *args: torch.device(device))
    spec = StudySpec(space=parse_space(SLOW_SPACE, source="test-space"), dataset="digits", sampler="random",
                     pruner="none", budget=1)
    with pytest.raises(_Pinned):
        run_study(spec, "pin", f"sqlite:///{workdir / 'pin.db'}", device="cuda:1", progress=False)
    assert calls[:2] == ["set_device cuda:1", "prepare_data"]
