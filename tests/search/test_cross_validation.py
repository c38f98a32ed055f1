"""`cnnsearch run --cv K`: each trial trains once per fold of train + val; its value is the mean over folds."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from search.cli import main
from search.trial.data import make_split, prepare_data
from search.trial.datasets import ImageSet, load_dataset
from storage.records import FOLD_VAL_ACCURACY, FOLD_VAL_ACCURACY_STD, FOLDS

SPACE = """
params:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  width: {type: categorical, choices: [4, 8]}
  epochs: 2
  depth: 1
"""


def _fails(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr. Return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.fixture(scope="module")
def cv_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A study of 2 trials run with ``--cv 3`` on digits (two epochs per fold), in its own directory."""
    root = tmp_path_factory.mktemp("cv")
    (root / "small.yaml").write_text(SPACE)
    with contextlib.chdir(root), pytest.MonkeyPatch.context() as patch:
        patch.delenv("CNNSEARCH_STORAGE", raising=False)
        patch.setattr("search.study.local.cpu_threads_per_worker", lambda jobs: 1)
        assert main(["run", "--study", "cv", "--dataset", "digits", "--space", "small.yaml", "--sampler", "random",
                     "--pruner", "none", "--trials", "2", "--cv", "3", "--no-progress"]) == 0
    yield root


@pytest.mark.slow
def test_cv_3_records_three_fold_values_per_trial_and_the_value_is_their_mean(cv_study: Path) -> None:
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{cv_study / 'cnnsearch.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        folds = t.user_attrs[FOLD_VAL_ACCURACY]
        assert len(folds) == 3 and all(0 <= a <= 1 for a in folds)
        assert t.value == pytest.approx(statistics.fmean(folds))
        assert t.user_attrs["val_accuracy"] == pytest.approx(t.value)
        assert t.user_attrs[FOLD_VAL_ACCURACY_STD] == pytest.approx(statistics.pstdev(folds))
        # The pruner sees the first fold's curve only; the trial trained 3 folds x 2 epochs.
        assert sorted(t.intermediate_values) == [1, 2] and t.user_attrs["epochs_run"] == 6
    # The folds the trials ran are the ones make_split gives for the study's seed: recorded like the split.
    images = load_dataset("digits")
    split = make_split(images.labels, seed=0, cv=3)
    recorded = study.user_attrs[FOLDS]
    assert recorded["k"] == 3 and recorded["fingerprint"] == split.fold_fingerprint()
    assert sum(recorded["sizes"]) == len(split.train) + len(split.val)


@pytest.mark.slow
def test_resuming_with_another_cv_is_refused_in_one_line(cv_study: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cv_study)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    common = ["run", "--study", "cv", "--dataset", "digits", "--space", "small.yaml", "--sampler", "random",
              "--pruner", "none", "--trials", "3", "--no-progress"]
    line = _fails(capsys, [*common, "--cv", "5"])
    assert "cv: study has 3, asked for 5" in line, line
    line = _fails(capsys, common)
    assert "cv: study has 3, asked for none" in line, line
    assert len(optuna.load_study(study_name="cv", storage="sqlite:///cnnsearch.db").trials) == 2


@pytest.mark.slow
def test_a_worker_whose_folds_differ_from_the_studys_is_refused(cv_study: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    for part in cv_study.glob("cnnsearch.db*"):
        (tmp_path / part.name).write_bytes(part.read_bytes())
    url = f"sqlite:///{tmp_path / 'cnnsearch.db'}"
    study = optuna.load_study(study_name="cv", storage=url)
    study.set_user_attr(FOLDS, {**study.user_attrs[FOLDS], "fingerprint": "0123456789abcdef"})
    line = _fails(capsys, ["worker", "--study", "cv", "--storage", url, "--trials", "1"])
    assert "folds" in line and "0123456789abcdef" in line, line


@pytest.mark.parametrize(("flags", "message"), [
    (["--cv", "1"], "--cv 1: give at least 2 folds"),
    (["--cv", "200"], "--cv 200 needs at least 200 images of every class in train + val"),
    (["--cv", "3", "--keep-checkpoints"], "--keep-checkpoints with --cv 3"),
])
def test_a_bad_number_of_folds_is_refused_in_one_line_before_the_study_exists(
        workdir: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str) -> None:
    line = _fails(capsys, ["run", "--study", "bad", "--dataset", "digits", "--space", "tiny", "--trials", "2",
                           *flags, "--no-progress"])
    assert message in line, line
    assert not (workdir / "cnnsearch.db").exists() or "bad" not in optuna.get_all_study_names(
        "sqlite:///cnnsearch.db")


def _indexed_images(labels: list[int]) -> ImageSet:
    """Images whose pixels spell their own index, so a tensor on the device says which images it holds."""
    n = len(labels)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    index = torch.arange(n)
    images[:, 0, 0, 0] = (index // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (index % 256).to(torch.uint8)
    return ImageSet("indexed", images, torch.tensor(labels), ["a", "b", "c"])


def _held(x: torch.Tensor) -> set[int]:
    return set((x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist())


def test_folds_are_disjoint_cover_train_and_val_and_never_hold_a_test_image() -> None:
    images = _indexed_images([0] * 40 + [1] * 50 + [2] * 60)
    split = make_split(images.labels, seed=4, cv=3)
    pooled = set(split.train.tolist()) | set(split.val.tolist())
    test = set(split.test.tolist())
    data = prepare_data(images, split, "cpu")
    assert len(data.folds) == 3
    seen: list[set[int]] = []
    for i in range(3):
        fold = data.fold(i)
        val, train = _held(fold.val_x), _held(fold.train_x)
        assert len(val) == len(fold.val_x) and len(train) == len(fold.train_x)  # no image twice
        assert not val & train and val | train == pooled and not (val | train) & test
        assert val == set(split.folds[i].tolist())
        # Stratified: every class in every fold's val part.
        assert set(fold.val_y.tolist()) == {0, 1, 2}
        seen.append(val)
    assert set().union(*seen) == pooled and sum(len(s) for s in seen) == len(pooled)
    again = make_split(images.labels, seed=4, cv=3)
    assert all(np.array_equal(a, b) for a, b in zip(split.folds, again.folds, strict=True))
    assert split.fingerprint() == make_split(images.labels, seed=4).fingerprint()  # the split itself unchanged


@pytest.mark.slow
def test_the_report_shows_each_top_trials_mean_and_spread_over_folds(cv_study: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{cv_study / 'cnnsearch.db'}"
    assert main(["report", "--study", "cv", "--storage", url, "--out", str(tmp_path / "r")]) == 0
    summary = (tmp_path / "r" / "summary.md").read_text()
    html = (tmp_path / "r" / "index.html").read_text()
    for t in optuna.load_study(study_name="cv", storage=url).get_trials():
        spread = f"{t.value:.4f} ± {t.user_attrs[FOLD_VAL_ACCURACY_STD]:.4f}"
        assert f"| #{t.number} | {spread} (3 folds) |" in summary, summary
        assert spread in html


@pytest.mark.slow
def test_worker_processes_run_each_trial_over_every_fold(workdir: Path) -> None:
    (workdir / "small.yaml").write_text(SPACE.replace("epochs: 2", "epochs: 1"))
    assert main(["run", "--study", "jobs", "--dataset", "digits", "--space", "small.yaml", "--sampler", "tpe",
                 "--trials", "2", "--cv", "2", "--jobs", "2", "--no-progress"]) == 0
    trials = optuna.load_study(study_name="jobs", storage="sqlite:///cnnsearch.db").get_trials()
    assert len(trials) == 2  # each ran in a worker process, which read K and the folds from the study
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert len(t.user_attrs[FOLD_VAL_ACCURACY]) == 2
        assert t.value == pytest.approx(statistics.fmean(t.user_attrs[FOLD_VAL_ACCURACY]))


def test_a_streamed_fold_holds_the_same_images_as_the_fold_on_the_device() -> None:
    images = load_dataset("digits")
    split = make_split(images.labels, seed=0, cv=3)
    on_device = prepare_data(images, split, "cpu")
    streamed = prepare_data(images, split, "cpu", data_memory=1)  # one byte: every image streams
    assert streamed.feed["mode"] == "stream" and on_device.feed["mode"] == "device"
    for i in range(3):
        a, b = on_device.fold(i), streamed.fold(i)
        assert torch.equal(a.train_x, b.train_x[0:len(b.train_x)]) and torch.equal(a.val_x, b.val_x[0:len(b.val_x)])
        assert torch.equal(a.train_y, b.train_y) and torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
