"""A study's spec, as it is written into the study and read back by workers and reports."""

from __future__ import annotations

import multiprocessing
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path

import optuna
import pytest

from search.study.spec import StudySpec, create_or_resume, fill_budget
from spaces import load_space
from storage import open_storage, records


def test_every_study_attr_readers_look_up_is_one_the_spec_writes() -> None:
    written = StudySpec(space=load_space("tiny"), dataset="digits", budget=3).to_attrs()
    named = {value for name, value in vars(records).items() if name.startswith("STUDY_")}
    assert named <= set(written)


def test_spec_round_trips_through_its_study_attrs() -> None:
    spec = StudySpec(space=load_space("tiny"), dataset="digits", objectives=["accuracy", "params"], sampler="tpe",
                     budget=3, max_params=10_000)
    back = StudySpec.from_attrs(spec.to_attrs(), "s")
    assert back.to_attrs() | {records.STUDY_VERSIONS: None} == spec.to_attrs() | {records.STUDY_VERSIONS: None}
    assert back.space == spec.space


def _create_when_all_are_ready(url: str, name: str, ready: Barrier) -> None:
    spec = StudySpec(space=load_space("tiny"), dataset="digits", budget=4)
    storage = open_storage(url, heartbeat_interval=None)
    ready.wait()
    fill_budget(create_or_resume(storage, name, spec), spec)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_processes_creating_one_study_at_once_all_join_it(tmp_path: Path, request: pytest.FixtureRequest,
                                                          backend: str) -> None:
    url = f"sqlite:///{tmp_path / 'at-once.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    name = f"at-once-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(4)
    procs = [context.Process(target=_create_when_all_are_ready, args=(url, name, ready)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * 4
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=None))
    assert study.user_attrs["budget"] == 4
    assert len(study.trials) <= 4  # the start points of the space at most: never one set per process


def _low_cost_space(lr: dict | None = None, **extra) -> object:
    from spaces import parse_space

    return parse_space({"params": {"lr": lr or {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                   "epochs": {"type": "int", "low": 2, "high": 8}},
                        "low_cost": {"epochs": 2}, **extra}, source="s.yaml")


def _queued(study: optuna.Study) -> list[tuple[dict, str | None]]:
    return [(t.system_attrs["fixed_params"], t.user_attrs.get("origin")) for t in study.get_trials()]


def test_low_cost_fixes_the_first_drawn_trial_after_the_start_points_once() -> None:
    spec = StudySpec(space=_low_cost_space(start=[{"lr": 0.01, "epochs": 5}]), dataset="digits")
    study = optuna.create_study(direction="maximize")
    assert fill_budget(study, spec) == 2
    assert _queued(study) == [({"lr": 0.01, "epochs": 5}, "start"), ({"epochs": 2}, "low_cost")]
    assert fill_budget(study, spec) == 0  # a second worker joining, or the study resumed: not again
    # The sampler draws the rest of the low-cost trial: lr from its range, epochs as fixed.
    trial = study.ask()  # the start point
    trial = study.ask()
    assert trial.suggest_int("epochs", 2, 8) == 2 and 1e-3 <= trial.suggest_float("lr", 1e-3, 1e-1, log=True) <= 0.1


def test_low_cost_is_not_enqueued_once_a_drawn_trial_ran_for_grids_or_past_the_budget() -> None:
    spec = StudySpec(space=_low_cost_space(), dataset="digits")
    resumed = optuna.create_study(direction="maximize")
    resumed.tell(resumed.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}), 0.5)
    assert fill_budget(resumed, spec) == 0 and len(resumed.get_trials()) == 1
    grid = StudySpec(space=_low_cost_space(lr={"type": "categorical", "choices": [0.01, 0.1]}), dataset="digits",
                     sampler="grid", budget=3)
    study = optuna.create_study(direction="maximize")
    fill_budget(study, grid)
    assert all(origin is None for _, origin in _queued(study)) and len(study.get_trials()) == 3
    one = StudySpec(space=_low_cost_space(start=[{"lr": 0.01}]), dataset="digits", budget=1)
    study = optuna.create_study(direction="maximize")
    assert fill_budget(study, one) == 1 and _queued(study) == [({"lr": 0.01}, "start")]
