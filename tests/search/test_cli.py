"""`cnnsearch run/status/best/studies` as a user runs them, on small real data (digits)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main

QUICK_SPACE = """
description: a couple of seconds per trial on digits
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  width: {type: int, low: 4, high: 8}
  batch_norm: {type: bool}
  epochs: {type: int, low: 1, high: 3}
  depth: 1
  batch_size: 128
"""

GRID_SPACE = """
params:
  lr: {type: categorical, choices: [0.003, 0.01]}
  batch_norm: {type: bool}
  width: {type: int, low: 4, high: 6, step: 2}
  epochs: 1
  depth: 1
"""


@pytest.fixture
def workdir(workdir: Path) -> Path:
    """The shared working directory (tests/conftest.py) with this module's space files."""
    (workdir / "quick.yaml").write_text(QUICK_SPACE)
    (workdir / "grid.yaml").write_text(GRID_SPACE)
    return workdir


def _study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'cnnsearch.db'}")


def _run(*args: str) -> int:
    return main(["run", "--dataset", "digits", "--no-progress", *args])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["auto", "tpe", "random", "gp", "cmaes", "qmc"])
def test_each_sampler_completes_its_budget(workdir: Path, sampler: str) -> None:
    assert (
        _run("--study", sampler, "--space", "quick.yaml", "--sampler", sampler, "--pruner", "none", "--trials", "3")
        == 0
    )
    trials = _study(workdir, sampler).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert 0.0 < t.value <= 1.0
        assert t.user_attrs["config"]["lr"] == t.params["lr"]
        assert len(t.intermediate_values) == t.params["epochs"]


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["none", "median", "sha", "hyperband"])
def test_each_pruner_runs_and_records_every_trial(workdir: Path, pruner: str) -> None:
    assert (
        _run("--study", pruner, "--space", "quick.yaml", "--pruner", pruner, "--sampler", "random", "--trials", "6")
        == 0
    )
    trials = _study(workdir, pruner).get_trials()
    assert len(trials) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["fail_reason"] == "pruned"
            assert "pruned by" in t.user_attrs["fail_message"]


def test_trial_records_config_metrics_and_worker(workdir: Path) -> None:
    assert _run("--study", "rec", "--space", "quick.yaml", "--trials", "1", "--pruner", "none") == 0
    (t,) = _study(workdir, "rec").get_trials()
    attrs = t.user_attrs
    for key in (
        "config",
        "seed",
        "device",
        "host",
        "pid",
        "params",
        "flops",
        "latency_ms",
        "throughput",
        "train_seconds",
        "curves",
        "val_accuracy",
    ):
        assert key in attrs, key
    assert attrs["device"] == "cpu"
    assert attrs["latency_ms"] > 0 and attrs["throughput"] > 0
    assert attrs["val_accuracy"] == t.value
    assert attrs["curves"]["val_accuracy"] == [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
    study_attrs = _study(workdir, "rec").user_attrs
    assert study_attrs["dataset"] == "digits"
    assert study_attrs["objectives"] == ["accuracy"]
    assert sum(study_attrs["split_sizes"]["sizes"].values()) == 1797
    assert len(t.user_attrs["config"]) > 20  # complete: the keys the space left out have their defaults


def test_grid_visits_every_point_exactly_once(workdir: Path) -> None:
    assert _run("--study", "g", "--space", "grid.yaml", "--sampler", "grid", "--pruner", "none") == 0
    trials = _study(workdir, "g").get_trials()
    points = sorted((t.params["lr"], t.params["batch_norm"], t.params["width"]) for t in trials)
    assert points == sorted((lr, bn, w) for lr in (0.003, 0.01) for bn in (False, True) for w in (4, 6))
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_resume_continues_the_same_study(workdir: Path) -> None:
    assert _run("--study", "r", "--space", "quick.yaml", "--trials", "2", "--pruner", "none") == 0
    first = [t.params for t in _study(workdir, "r").get_trials()]
    assert _run("--study", "r", "--space", "quick.yaml", "--trials", "4", "--pruner", "none") == 0
    trials = _study(workdir, "r").get_trials()
    assert len(trials) == 4
    assert [t.params for t in trials[:2]] == first


def test_a_different_space_is_refused_and_nothing_changes(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run("--study", "d", "--space", "quick.yaml", "--trials", "1", "--pruner", "none") == 0
    capsys.readouterr()
    assert _run("--study", "d", "--space", "tiny", "--trials", "3") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnsearch: error: study 'd' exists with different settings")
    assert "space: study has quick" in err and "asked for tiny" in err
    assert len(err.splitlines()) == 1
    assert len(_study(workdir, "d").get_trials()) == 1


@pytest.mark.slow
def test_trials_budget_counts_across_jobs(workdir: Path) -> None:
    env = {**os.environ, "CNNSEARCH_STORAGE": f"sqlite:///{workdir / 'jobs.db'}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.cli",
            "run",
            "--study",
            "j",
            "--dataset",
            "digits",
            "--space",
            "quick.yaml",
            "--trials",
            "5",
            "--jobs",
            "2",
            "--pruner",
            "none",
            "--no-progress",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="j", storage=env["CNNSEARCH_STORAGE"])
    trials = study.get_trials()
    assert len(trials) == 5
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert "5 complete" in proc.stdout
    workers = [line for line in proc.stdout.splitlines() if line.startswith("  worker ")]
    assert len(workers) == 2 and all("budget spent" in line for line in workers)


@pytest.mark.slow
def test_multi_objective_best_is_the_pareto_front(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        _run(
            "--study",
            "mo",
            "--space",
            "quick.yaml",
            "--objectives",
            "accuracy,params",
            "--sampler",
            "random",
            "--trials",
            "5",
        )
        == 0
    )
    capsys.readouterr()
    assert main(["best", "--study", "mo", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    trials = [t for t in _study(workdir, "mo").get_trials() if t.state == TrialState.COMPLETE]

    def dominated(v: list[float]) -> bool:
        return any(o.values[0] >= v[0] and o.values[1] <= v[1] and o.values != v for o in trials)

    assert front and all(not dominated(rec["values"]) for rec in front)
    expected = {t.number for t in trials if not dominated(t.values)}
    assert {rec["number"] for rec in front} == expected


def test_status_and_best_json_match_the_storage(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run("--study", "js", "--space", "quick.yaml", "--trials", "3", "--pruner", "none") == 0
    capsys.readouterr()
    study = _study(workdir, "js")
    assert main(["status", "--study", "js", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["study"] == "js"
    assert status["counts"]["COMPLETE"] == 3 and status["running"] == []
    assert status["best_value"] == study.best_value
    assert status["elapsed_s"] > 0
    assert main(["best", "--study", "js", "--json", "--top", "2"]) == 0
    best = json.loads(capsys.readouterr().out)
    ranked = sorted(study.get_trials(), key=lambda t: -t.value)[:2]
    assert [b["number"] for b in best] == [t.number for t in ranked]
    assert best[0]["value"] == study.best_value
    assert best[0]["params"] == study.best_trial.params
    assert best[0]["config"] == study.best_trial.user_attrs["config"]
    assert best[0]["metrics"]["params"] == study.best_trial.user_attrs["params"]
    assert main(["studies", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["study"] == "js" and listed["n_trials"] == 3


def test_warm_start_runs_the_earlier_best_first(workdir: Path) -> None:
    assert _run("--study", "w1", "--space", "quick.yaml", "--trials", "3", "--pruner", "none") == 0
    best = _study(workdir, "w1").best_trial.params
    assert (
        _run("--study", "w2", "--space", "quick.yaml", "--trials", "2", "--pruner", "none", "--warm-start", "w1") == 0
    )
    assert _study(workdir, "w2").get_trials()[0].params == best


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--sampler", "bayes"],
            "--sampler 'bayes' is unknown; choose one of auto, tpe, random, grid, gp, cmaes, qmc, nsga2",
        ),
        (["--pruner", "asha"], "--pruner 'asha' is unknown; choose one of none, median, sha, hyperband"),
        (["--objectives", "accuracy,speed"], "--objectives: 'speed' is unknown"),
        (["--space", "nope"], "nope"),
    ],
)
def test_unknown_names_get_one_line_and_exit_2(
    workdir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    assert _run("--study", "bad", "--trials", "1", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (workdir / "cnnsearch.db").exists()


@pytest.mark.slow
def test_start_points_of_the_space_run_first(workdir: Path) -> None:
    (workdir / "start.yaml").write_text(QUICK_SPACE + "start:\n  - {lr: 0.01, width: 8, batch_norm: true, epochs: 1}\n")
    assert _run("--study", "st", "--space", "start.yaml", "--trials", "2", "--pruner", "none") == 0
    first, second = _study(workdir, "st").get_trials()
    assert first.params == {"lr": 0.01, "width": 8, "batch_norm": True, "epochs": 1}
    assert second.params != first.params
    assert _run("--study", "st", "--space", "start.yaml", "--trials", "3", "--pruner", "none") == 0
    assert [t.params for t in _study(workdir, "st").get_trials()].count(first.params) == 1  # not rerun on resume


@pytest.mark.slow
def test_no_start_leaves_the_start_points_out(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "start.yaml").write_text(QUICK_SPACE + "start:\n  - {lr: 0.01, width: 8, batch_norm: true, epochs: 1}\n")
    assert _run("--study", "ns", "--space", "start.yaml", "--trials", "2", "--pruner", "none", "--no-start") == 0
    assert "--no-start: the space's 1 start point(s) are not tried" in capsys.readouterr().out
    trials = _study(workdir, "ns").get_trials()
    assert len(trials) == 2 and all("origin" not in t.user_attrs for t in trials)


SIZES_SPACE = """
params:
  width: {type: categorical, choices: [4, 24]}
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  epochs: 1
  depth: 1
  batch_size: 128
"""


def _params_of_width(width: int) -> int:
    from search.trial.measure import count_params
    from search.trial.models import build_model
    from spaces import parse_space

    config = parse_space({"params": {"width": width, "epochs": 1, "depth": 1}}, source="t").config_from_params({})
    return count_params(build_model(config.replace(seed=0), (1, 8, 8), 10))


def test_max_params_refuses_big_models_before_training_and_best_meets_it(workdir: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    small, big = _params_of_width(4), _params_of_width(24)
    limit = (small + big) // 2
    (workdir / "sizes.yaml").write_text(SIZES_SPACE)
    assert _run("--study", "mp", "--space", "sizes.yaml", "--sampler", "random", "--pruner", "none",
                "--trials", "8", "--max-params", str(limit)) == 0
    trials = _study(workdir, "mp").get_trials()
    refused = [t for t in trials if t.params["width"] == 24]
    kept = [t for t in trials if t.params["width"] == 4]
    assert refused and kept, "the seeded random sampler drew both widths"
    for t in refused:
        assert (t.state, t.user_attrs["fail_reason"], t.user_attrs["params"]) == (TrialState.PRUNED, "constraint", big)
        assert t.intermediate_values == {}, "refused before any training"
        assert f"exceed --max-params {limit}" in t.user_attrs["fail_message"]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["params"] == small for t in kept)
    capsys.readouterr()
    assert main(["best", "--study", "mp", "--json", "--top", "3"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best and all(rec["metrics"]["params"] <= limit for rec in best)
    assert best[0]["value"] == max(t.value for t in kept)


def test_a_study_where_no_trial_meets_the_constraints_says_so(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _run("--study", "lat", "--space", "quick.yaml", "--pruner", "none", "--trials", "2",
                    "--max-latency-ms", "1e-9") == 0
    out, err = capsys.readouterr()
    assert "none of the 2 completed trials meets the study's constraints (--max-params, --max-latency-ms)" in out
    assert "Traceback" not in err
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], "Optuna's deprecation shown to users"
    assert all(t.user_attrs["latency_ms"] > 1e-9 for t in _study(workdir, "lat").get_trials())
    assert main(["best", "--study", "lat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["status", "--study", "lat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best_value"] is None


# --- what `studies`, `best` and `status` show, on studies written here (no training) ------------------------

def _made_study(workdir: Path, name: str, objectives: list[str]) -> optuna.Study:
    """A study as cnnsearch records one, in the working directory's default storage."""
    directions = ["maximize" if o == "accuracy" else "minimize" for o in objectives]
    study = optuna.create_study(storage=f"sqlite:///{workdir / 'cnnsearch.db'}", study_name=name,
                                directions=directions)
    for key, value in {"dataset": "digits", "space_name": "tiny", "objectives": objectives}.items():
        study.set_user_attr(key, value)
    return study


def _made_trial(study: optuna.Study, values: list[float], depth: int = 2, built: int | None = None,
                notes: tuple[str, ...] = ()) -> int:
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
             "depth": optuna.distributions.IntDistribution(1, 4)}
    study.enqueue_trial({"depth": depth})
    trial = study.ask(dists)
    config = {"lr": trial.params["lr"], "depth": depth if built is None else built, "width": 16, "seed": 1}
    attrs = {"config": config, "val_accuracy": values[0], "params": 12345, "latency_ms": 0.123456,
             "train_seconds": 3.21, "notes": list(notes), "device": "cpu", "host": "box"}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, values)
    return trial.number


def test_studies_names_the_pareto_front_and_counts_only_trials_that_ran(workdir: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    study = _made_study(workdir, "mo", ["accuracy", "latency"])
    for values in ([0.9, 0.5], [0.8, 0.1], [0.7, 0.9]):  # the third is dominated
        _made_trial(study, values)
    for _ in range(4):
        study.enqueue_trial({"lr": 0.01, "depth": 1})  # waiting, never ran
    assert main(["studies"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of 2 (accuracy max, latency min)" in out
    assert "3 ran, 4 waiting" in out
    assert "best 2" not in out and "7 trials" not in out
    assert main(["studies", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["n_trials"] == 3 and listed["waiting"] == 4 and listed["pareto_front"] == 2
    assert listed["objectives"] == ["accuracy", "latency"]
    assert sorted(listed["best_value"]) == [[0.8, 0.1], [0.9, 0.5]]


def test_best_top_is_a_compact_table_with_notes_and_full_config_on_request(workdir: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    study = _made_study(workdir, "b", ["accuracy"])
    clamped = "depth 4 clamped to 2: the 8x8 input holds 2 downsampling stages"
    for acc in (0.912345678, 0.95, 0.5):
        _made_trial(study, [acc], depth=4, built=2, notes=(clamped,))
    assert main(["best", "--study", "b", "--top", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) <= 10, out
    header = next(line for line in lines if line.split()[:2] == ["rank", "trial"])
    assert "accuracy" in header and "params" in header and "latency" in header
    assert "0.95" in out and "0.9123" in out and "0.912345678" not in out  # rounded for people
    assert "depth=2 (asked 4)" in out
    assert clamped in out
    assert "width:" not in out  # the config is not dumped
    assert main(["best", "--study", "b", "--top", "1", "--full"]) == 0
    full = capsys.readouterr().out
    assert "width: 16" in full and "depth: 2" in full
    assert main(["best", "--study", "b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["value"] == 0.95  # exact


def test_best_of_several_objectives_says_pareto_front_and_names_them(workdir: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    study = _made_study(workdir, "mb", ["accuracy", "latency"])
    for values in ([0.9, 0.5], [0.8, 0.1], [0.7, 0.9]):
        _made_trial(study, values)
    assert main(["best", "--study", "mb"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of 2 trials (accuracy max, latency min)" in out
    header = next(line for line in out.splitlines() if line.split()[:2] == ["rank", "trial"])
    assert "accuracy" in header and "latency" in header


def test_status_is_readable_text(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    study = _made_study(workdir, "s", ["accuracy", "latency"])
    _made_trial(study, [0.9, 0.5])
    _made_trial(study, [0.8, 0.1])
    study.set_user_attr("budget", 5)
    trial = study.ask()
    for key, value in {"worker": "box:1", "host": "box", "device": "cpu"}.items():
        trial.set_user_attr(key, value)
    study.enqueue_trial({"lr": 0.01})
    assert main(["status", "--study", "s"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "[" not in out, out  # no Python dicts or lists
    assert "2 complete, 1 running, 1 waiting" in out
    assert "Pareto front of 2 trials (accuracy max, latency min)" in out
    assert "worker box:1 (cpu): 1 running" in out


def test_version_is_printed(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cnnsearch {version('cnnsearch')}"


DEEP_SPACE = """
params:
  depth: {type: categorical, choices: [2, 4]}
  epochs: 1
  width: 4
  batch_size: 128
"""


def test_a_clamped_depth_is_warned_at_start_recorded_as_built_and_exported_with_its_note(
        workdir: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    (workdir / "deep.yaml").write_text(DEEP_SPACE)
    with caplog.at_level(logging.WARNING):
        assert _run("--study", "deep", "--space", "deep.yaml", "--sampler", "grid", "--pruner", "none") == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "depth" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "depth up to 4" in warned[0] and "8x8 input holds 2 downsampling stages" in warned[0]
    (deep,) = [t for t in _study(workdir, "deep").get_trials() if t.params["depth"] == 4]
    assert deep.user_attrs["config"]["depth"] == 2  # what was built
    clamped = "depth 4 clamped to 2: the 8x8 input holds 2 downsampling stages"
    assert clamped in deep.user_attrs["notes"]

    capsys.readouterr()
    assert main(["best", "--study", "deep", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "depth=2 (asked 4)" in out and f"note: {clamped}" in out

    assert main(["export", "--study", "deep", "--trial", str(deep.number), "--out", "exported"]) == 0
    recipe = yaml.safe_load((workdir / "exported" / "recipe.yaml").read_text())
    assert recipe["config"]["depth"] == 2 and recipe["notes"] == [clamped]
    assert clamped in (workdir / "exported" / "README.md").read_text()
    capsys.readouterr()
    assert main(["train", "--config", "exported/recipe.yaml", "--out", "retrained"]) == 0
    assert "(the trial's, exactly)" in capsys.readouterr().out  # the built config is the network trained

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["worker", "--study", "deep"]) == 0  # nothing left to run: it warns and ends
    assert len([r for r in caplog.records if "depth up to 4" in r.getMessage()]) == 1


def test_resuming_with_other_settings_prints_only_the_refusal(workdir: Path) -> None:
    from search.study.spec import StudySpec, create_or_resume
    from spaces import load_space
    from storage import open_storage
    from tests.support.cli import CLI, clean_env

    create_or_resume(open_storage(f"sqlite:///{workdir / 'cnnsearch.db'}", heartbeat_interval=None), "other",
                     StudySpec(space=load_space("tiny"), dataset="digits"))
    proc = subprocess.run([*CLI, "run", "--study", "other", "--dataset", "digits", "--space", "quick.yaml",
                           "--trials", "1", "--no-progress"], cwd=workdir, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("cnnsearch: error: study 'other' exists with different settings"), err
    assert len(err.splitlines()) == 1, err


START_SPACE = """
params:
  optimizer: {type: categorical, choices: [sgd, adam]}
  momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: [sgd]}}
  epochs: 1
  depth: 1
  width: 4
  batch_size: 128
start:
  - {optimizer: adam, momentum: 0.9}
"""


def test_a_start_point_setting_a_disabled_parameter_is_warned(workdir: Path, capsys: pytest.CaptureFixture,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    (workdir / "start.yaml").write_text(START_SPACE)
    ignored = "start[0]: momentum=0.9 is ignored: momentum is searched only when optimizer is sgd (the point has adam)"
    assert main(["spaces", "validate", "start.yaml"]) == 0
    out, err = capsys.readouterr()
    assert "valid" in out and ignored in err
    with caplog.at_level(logging.WARNING):
        assert _run("--study", "sp", "--space", "start.yaml", "--trials", "1", "--pruner", "none") == 0
    assert [r.getMessage() for r in caplog.records if ignored in r.getMessage()] != []
    (first,) = _study(workdir, "sp").get_trials()
    assert first.params == {"optimizer": "adam"}
