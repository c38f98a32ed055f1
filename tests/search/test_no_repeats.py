"""A study never spends its budget on a config it already holds: hand-started workers, warm start, grids."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import search
from search.cli import main
from tests.support.workers import make_study

SMALL_SPACE = """
params:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  width: {type: int, low: 4, high: 8}
  epochs: 1
  depth: 1
  batch_size: 256
"""

GRID_SPACE = """
params:
  lr: {type: categorical, choices: [0.003, 0.03]}
  width: {type: int, low: 4, high: 6, step: 2}
  batch_norm: {type: bool}
  epochs: 1
  depth: 1
  batch_size: 256
"""

DECLARED_GRID_SPACE = """
description: a full factorial grid, 2 x 2
full_grid: true
params:
  lr: {type: categorical, choices: [0.003, 0.03]}
  width: {type: categorical, choices: [4, 6]}
  epochs: 3
  depth: 1
  batch_size: 256
"""


@pytest.fixture
def workdir(workdir: Path) -> Path:
    """The shared working directory (tests/conftest.py) with this module's space files."""
    (workdir / "small.yaml").write_text(SMALL_SPACE)
    (workdir / "grid.yaml").write_text(GRID_SPACE)
    (workdir / "declared-grid.yaml").write_text(DECLARED_GRID_SPACE)
    return workdir


def _run(*args: str) -> int:
    return main(["run", "--dataset", "digits", "--device", "cpu", "--no-progress", *args])


def _trials(workdir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'cnnsearch.db'}").get_trials()


def _repeated(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    counts = Counter(tuple(sorted(t.params.items())) for t in trials)
    return [dict(params) for params, n in counts.items() if n > 1]


def _worker(workdir: Path, study: str, trials: int) -> subprocess.Popen:
    """`cnnsearch worker` started by hand in another terminal: a process of its own, index 0 like any other."""
    env = {k: v for k, v in os.environ.items() if k != "CNNSEARCH_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(search.__file__).parents[1]), env.get("PYTHONPATH", "")])  # this code
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "worker", "--study", study, "--storage",
         f"sqlite:///{workdir / 'cnnsearch.db'}", "--device", "cpu", "--threads", "1", "--trials", str(trials)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_run_and_two_workers_joined_by_hand_never_repeat_a_config(workdir: Path) -> None:
    # The study exists with a budget of 9 (as `run --trials 9` makes it); two workers join it by hand,
    # then `run` works off what they left.
    make_study(f"sqlite:///{workdir / 'cnnsearch.db'}", "s", yaml.safe_load(SMALL_SPACE), budget=9, sampler="auto")
    workers = [_worker(workdir, "s", 3), _worker(workdir, "s", 3)]
    for proc in workers:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    assert _run("--study", "s", "--space", "small.yaml", "--pruner", "none", "--trials", "9") == 0

    trials = _trials(workdir, "s")
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    assert _repeated(trials) == []


@pytest.mark.slow
def test_warm_start_does_not_run_the_warm_start_configs_again(workdir: Path) -> None:
    assert _run("--study", "a", "--space", "small.yaml", "--pruner", "none", "--trials", "2") == 0
    assert _run("--study", "b", "--space", "small.yaml", "--pruner", "none", "--trials", "5",
                "--warm-start", "a") == 0
    earlier = [t.params for t in _trials(workdir, "a")]
    trials = _trials(workdir, "b")
    assert [t.params for t in trials[:2]] == earlier or [t.params for t in trials[:2]] == earlier[::-1]
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert _repeated(trials) == []


@pytest.mark.slow
def test_a_grid_study_with_more_trials_than_points_runs_each_point_once_and_says_so(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _run("--study", "g", "--space", "grid.yaml", "--sampler", "grid", "--trials", "10") == 0
    out = capsys.readouterr().out
    assert "--trials 10 is more than the grid's 8 points" in out
    trials = _trials(workdir, "g")
    points = Counter((t.params["lr"], t.params["width"], t.params["batch_norm"]) for t in trials)
    assert sorted(points) == sorted((lr, w, bn) for lr in (0.003, 0.03) for w in (4, 6) for bn in (False, True))
    assert set(points.values()) == {1}
    assert all(t.state == TrialState.COMPLETE for t in trials)  # a grid study does not prune by default


@pytest.mark.slow
def test_a_space_that_declares_a_full_grid_runs_as_a_grid_and_prunes_nothing(workdir: Path) -> None:
    assert _run("--study", "d", "--space", "declared-grid.yaml", "--sampler", "auto", "--trials", "6") == 0
    trials = _trials(workdir, "d")
    assert sorted((t.params["lr"], t.params["width"]) for t in trials) == [(0.003, 4), (0.003, 6), (0.03, 4),
                                                                            (0.03, 6)]
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in trials)


def test_grid_table_declares_itself_a_full_grid(capsys: pytest.CaptureFixture) -> None:
    assert main(["spaces", "show", "grid-table"]) == 0
    assert "full_grid: true" in capsys.readouterr().out.splitlines()
