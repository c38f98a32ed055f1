"""Several `cnnsearch worker` processes on one study, started as a colleague would start them.

Each is a subprocess (the password in ``PGPASSWORD``) with a 1 s heartbeat, so that a dead worker
is noticed in 3 s. Used by the PostgreSQL worker tests and the Ray tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.cli import main
from search.study.spec import StudySpec, create_or_resume, fill_budget
from spaces import parse_space
from storage import open_storage
from tests.support.pg import PgCluster

FAST_SPACE = {
    "params": {
        "lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
        "width": {"type": "int", "low": 4, "high": 6},
        "epochs": 1,
        "depth": 1,
        "batch_size": 256,
    }
}

SLOW_SPACE = {"params": {"lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
                         "epochs": 30, "width": 8, "depth": 1, "batch_size": 32}}
"""Trials of many short epochs (several seconds in all): a worker can be killed in the middle of one.

4 epochs (under a second on digits) let a whole trial slip between two polls of the test."""

GRID_SPACE = {
    "params": {
        "lr": {"type": "categorical", "choices": [0.003, 0.03]},
        "width": {"type": "int", "low": 4, "high": 6, "step": 2},
        "batch_norm": {"type": "bool"},
        "epochs": 1,
        "depth": 1,
        "batch_size": 256,
    }
}

FAST_HEARTBEAT = {"CNNSEARCH_HEARTBEAT_INTERVAL": "1", "CNNSEARCH_HEARTBEAT_GRACE": "3"}


def study_name() -> str:
    return f"w-{uuid.uuid4().hex[:8]}"


def make_study(url: str, name: str, space: dict, *, budget: int | None, sampler: str = "random") -> StudySpec:
    """Create study ``name`` as `cnnsearch run` would, without running any trial of it."""
    spec = StudySpec(space=parse_space(space, source="test-space"), dataset="digits", sampler=sampler,
                     pruner="none", budget=budget)
    fill_budget(create_or_resume(open_storage(url, heartbeat_interval=None), name, spec), spec)
    return spec


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=None))


class Workers:
    """`cnnsearch worker` subprocesses; whatever is still running at the end is killed."""

    def __init__(self, cluster: PgCluster, logs: Path) -> None:
        self.url = cluster.url_for(password=None)  # the password travels in PGPASSWORD only
        # PYTHONFAULTHANDLER: a worker that hangs is sent SIGABRT and prints every thread's stack.
        self.env = {**os.environ, **FAST_HEARTBEAT, "PGPASSWORD": cluster.password, "PYTHONFAULTHANDLER": "1"}
        self.env.pop("CNNSEARCH_STORAGE", None)
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self, study: str, *args: str) -> subprocess.Popen:
        log = self.logs / f"worker-{len(self.procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "search.cli", "worker", "--study", study, "--storage", self.url,
                 "--device", "cpu", "--threads", "1", *args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float = 90) -> str:
        """Wait for ``proc`` to exit 0 and return its output; a hung one fails with its stacks."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            pytest.fail(f"worker {proc.pid} still running after {timeout:g} s:\n{proc.log.read_text()}")  # type: ignore[attr-defined]
        output = proc.log.read_text()  # type: ignore[attr-defined]
        assert proc.returncode == 0, output
        return output

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def trials_of(url: str, name: str, *states: TrialState) -> list[FrozenTrial]:
    return load(url, name).get_trials(deepcopy=False, states=states or None)


def status_json(url: str, name: str, capsys: pytest.CaptureFixture) -> dict:
    """`cnnsearch status --json` as a user runs it."""
    capsys.readouterr()
    assert main(["status", "--study", name, "--storage", url, "--json"]) == 0
    return json.loads(capsys.readouterr().out)
