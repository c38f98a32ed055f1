"""`--objectives` beyond accuracy: val loss, macro-F1, balanced accuracy, top-5 accuracy and a user's function.

Each ranks the trials of a tiny study on digits in its own direction, is what the pruner judges
each epoch, and is named by `best` and the report; a user's function that raises fails only its
trial; a bad name is one line and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.cli import main
from search.study.objective import run_trial, worker_identity
from search.study.spec import StudySpec
from search.trial.data import make_split, prepare_data
from search.trial.datasets import load_dataset
from spaces import parse_space
from tests.support.studies import QUICK_LR_SPACE

USER_METRICS = """
import numpy as np

def accuracy(y_true, logits):
    # The plain accuracy, written by hand: it must equal the val_accuracy cnnsearch measures.
    assert y_true.dtype == np.int64 and logits.ndim == 2 and len(logits) == len(y_true)
    return float((logits.argmax(1) == y_true).mean())

def fails_once(y_true, logits):
    import os
    if not os.path.exists("failed-once"):
        open("failed-once", "w").close()
        raise ValueError("cannot score this one\\nsecond line")
    return 0.5
"""


@pytest.fixture
def workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory with the space and a user's metrics both as a file and as package ``my_pkg``."""
    (workdir / "quick.yaml").write_text(QUICK_LR_SPACE)
    (workdir / "mine.py").write_text(USER_METRICS)
    (workdir / "my_pkg").mkdir()
    (workdir / "my_pkg" / "__init__.py").write_text("")
    (workdir / "my_pkg" / "metrics.py").write_text(USER_METRICS)
    monkeypatch.syspath_prepend(str(workdir))
    yield workdir
    for name in ("my_pkg.metrics", "my_pkg"):  # the next test's my_pkg is another folder's
        sys.modules.pop(name, None)


def _run(study: str, objectives: str, trials: int = 3, *more: str) -> int:
    return main(["run", "--study", study, "--dataset", "digits", "--space", "quick.yaml", "--no-progress",
                 "--sampler", "random", "--pruner", "none", "--trials", str(trials), "--objectives", objectives, *more])


def _study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'cnnsearch.db'}")


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "metric", "direction"), [
    ("loss", "val_loss", "minimize"),
    ("macro_f1", "val_macro_f1", "maximize"),
    ("balanced_accuracy", "val_balanced_accuracy", "maximize"),
    ("top5_accuracy", "val_top5_accuracy", "maximize"),
    ("my_pkg.metrics:accuracy:max", "my_pkg.metrics:accuracy", "maximize"),
])
def test_each_objective_ranks_the_trials_in_its_direction_and_is_what_the_pruner_sees(
        workdir: Path, capsys: pytest.CaptureFixture, objective: str, metric: str, direction: str) -> None:
    assert _run("o", objective) == 0
    out = capsys.readouterr().out
    study = _study(workdir, "o")
    assert [d.name.lower() for d in study.directions] == [direction]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        # The value is the metric's last epoch, recorded under its name, and every epoch was reported as it.
        curve = t.user_attrs["curves"][metric]
        assert t.value == t.user_attrs[metric] == curve[-1]
        assert [t.intermediate_values[e] for e in sorted(t.intermediate_values)] == curve and len(curve) == 2
        assert 0.0 < t.value <= 1.0 or metric == "val_loss"
        if objective.startswith("my_pkg"):
            assert t.value == t.user_attrs["val_accuracy"]
    assert f"ranked by {objective}" in out
    assert main(["best", "--study", "o", "--top", "3", "--json"]) == 0
    ranked = [rec["value"] for rec in json.loads(capsys.readouterr().out)]
    assert ranked == sorted((t.value for t in trials), reverse=direction == "maximize")
    assert main(["report", "--study", "o"]) == 0
    summary = (workdir / "cnnsearch-reports" / "o" / "summary.md").read_text()
    assert f"Ranked by {objective} ({direction})" in summary


@pytest.mark.slow
def test_the_pruner_is_asked_with_the_first_objectives_value_each_epoch() -> None:
    # A pruner that stops a trial whose reported value exceeds 0.0001 after epoch 1: with val loss first it
    # stops (a loss is above that), and says which metric it judged; the trial's curve is the loss.
    space = parse_space({"params": {"lr": 0.01, "width": 4, "depth": 1, "epochs": 2}}, source="test")
    spec = StudySpec(space=space, dataset="digits", objectives=["loss"], budget=1)
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.ThresholdPruner(upper=1e-4))
    study.enqueue_trial({})
    trial = study.get_trials(deepcopy=False)[0]
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
    images = load_dataset("digits")
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu")
    outcome = run_trial(study, trial._trial_id, spec, data, torch.device("cpu"), worker_identity(torch.device("cpu")))
    (pruned,) = study.get_trials()
    assert outcome.state == TrialState.PRUNED
    assert pruned.user_attrs["fail_message"].startswith("pruned by hyperband at epoch 1 (val_loss ")
    assert pruned.intermediate_values[1] > 0.1  # a loss, not an accuracy reported under the loss's direction


@pytest.mark.slow
def test_a_user_function_that_raises_fails_its_trial_with_its_message_and_the_study_goes_on(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run("u", "mine.py:fails_once:max", 2) == 0
    out = capsys.readouterr().out
    first, second = _study(workdir, "u").get_trials()
    assert first.state == TrialState.FAIL and second.state == TrialState.COMPLETE
    message = first.user_attrs["fail_message"]
    assert message == f"ScoreFailed: {workdir / 'mine.py'}:fails_once raised ValueError: cannot score this one"
    assert second.value == 0.5
    assert "1 complete, 0 pruned, 1 failed" in out
    # Recorded by its absolute path: a worker started in another directory imports the same file.
    assert _study(workdir, "u").user_attrs["objectives"] == [f"{workdir / 'mine.py'}:fails_once:max"]


@pytest.mark.parametrize(("objectives", "message"), [
    ("accuracy,f1", "--objectives: 'f1' is unknown; choose from accuracy, loss, macro_f1, balanced_accuracy, "
                    "top5_accuracy, latency, params, flops"),
    ("my_pkg.metrics:accuracy", "--objectives: 'my_pkg.metrics:accuracy' needs a direction: "
                                "my_pkg.metrics:accuracy:max or my_pkg.metrics:accuracy:min"),
    ("my_pkg.metrics:accuracy:up", "--objectives: 'my_pkg.metrics:accuracy:up' is unknown"),
    ("no_such_pkg.metrics:score:max", "--objectives: 'no_such_pkg.metrics' cannot be imported (ModuleNotFoundError"),
    ("my_pkg.metrics:nothing:max", "--objectives: 'my_pkg.metrics' has no function 'nothing'"),
    ("missing.py:score:min", "missing.py; give module:function (importable here) or path/to/file.py:function"),
    ("loss,loss", "--objectives names one objective twice: loss,loss"),
])
def test_a_bad_objective_is_one_line_and_exit_2(workdir: Path, capsys: pytest.CaptureFixture, objectives: str,
                                                message: str) -> None:
    assert _run("bad", objectives, 1) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (workdir / "cnnsearch.db").exists()


def test_a_worker_that_cannot_import_the_studys_score_is_refused_in_one_line(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from search.study.spec import create_or_resume
    from spaces import load_space
    from storage import open_storage

    spec = StudySpec(space=load_space("tiny"), dataset="digits", objectives=["mine.py:accuracy:max"], budget=1)
    create_or_resume(open_storage(f"sqlite:///{workdir / 'cnnsearch.db'}"), "joined", spec)
    (workdir / "mine.py").unlink()  # this machine's copy of the study's metric is missing
    assert main(["worker", "--study", "joined"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"no file {workdir / 'mine.py'}" in err and len(err.splitlines()) == 1
    assert [t.state for t in _study(workdir, "joined").get_trials()] == []
