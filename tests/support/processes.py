"""Worker processes for the storage tests (spawned, so they live in an importable module)."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Barrier

import optuna

from storage import open_storage


def _open_when_all_are_ready(url: str, ready: Barrier) -> None:
    ready.wait()
    open_storage(url)


def open_at_once(url: str, n_processes: int = 3) -> list[int | None]:
    """Exit codes of processes that all open ``url`` at the same moment."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(n_processes)
    openers = [context.Process(target=_open_when_all_are_ready, args=(url, ready)) for _ in range(n_processes)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=120)
    return [opener.exitcode for opener in openers]


def square(trial: optuna.Trial) -> float:
    """A trivial objective: one float parameter."""
    return trial.suggest_float("x", -1.0, 1.0) ** 2


def run_trials_until_budget(url: str, study_name: str, budget: int) -> None:
    """A worker process: joins the study and runs trials until the study-wide budget is spent."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    # n_trials only bounds a runaway loop; the callback is what stops the worker.
    study.optimize(square, n_trials=budget, callbacks=[optuna.study.MaxTrialsCallback(budget, states=None)])


def hang_in_a_trial(url: str, study_name: str) -> None:
    """A worker process whose trial never ends: the test kills it mid-trial."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url, heartbeat_interval=1, grace_period=2))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1.0, 1.0)
        time.sleep(600)
        return 0.0

    study.optimize(objective, n_trials=1)
