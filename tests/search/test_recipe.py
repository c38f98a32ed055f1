"""`cnnsearch export` and `cnnsearch train --config`: a recipe leaves the study and reproduces the trial."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from search import build_model, load_recipe
from search.cli import main
from search.study.spec import StudySpec, create_or_resume
from search.trial.errors import CnnSearchError
from spaces import load_space
from spaces.schema import TrialConfig
from storage import open_storage
from tests.support.cli import CLI, clean_env
from tests.support.studies import STUDY

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def study_url(tmp_path: Path, tiny_study: Callable[[Path], str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    return tiny_study(tmp_path / "db")


def _best(url: str) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat_interval=None))
    return max((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))


@pytest.mark.slow
def test_export_then_train_in_a_fresh_process_reproduces_the_trial(study_url: str, tmp_path: Path) -> None:
    out = tmp_path / "training-repo" / "configs"
    assert main(["export", "--study", STUDY, "--storage", study_url, "--out", str(out)]) == 0
    best = _best(study_url)
    with (out / "recipe.yaml").open() as f:
        recipe = yaml.safe_load(f)
    assert recipe["provenance"]["trial"] == best.number
    assert recipe["provenance"]["seed"] == best.user_attrs["seed"]
    assert recipe["config"] == best.user_attrs["config"]
    assert recipe["metrics"]["val_accuracy"] == best.user_attrs["val_accuracy"]
    assert recipe["input_shape"] == [1, 8, 8] and recipe["classes"] == [str(i) for i in range(10)]
    assert len(recipe["preprocessing"]["mean"]) == 1 and 0 < recipe["preprocessing"]["std"][0] < 1
    assert recipe["weights"]["sha256"] == hashlib.sha256((out / "weights.pt").read_bytes()).hexdigest()
    assert "search import build_model" in (out / "README.md").read_text()

    # The kept weights are the trial's model: they load safely into the model the recipe builds.
    kept = torch.load(out / "weights.pt", weights_only=True)
    build_model(recipe).load_state_dict(kept)

    env = {k: v for k, v in os.environ.items() if k != "CNNSEARCH_STORAGE"}
    env["PYTHONPATH"] = str(REPO)
    # The console script a user runs (`python -m search.cli` would not see commands registered by other modules).
    cnnsearch = Path(sys.executable).with_name("cnnsearch")
    proc = subprocess.run([str(cnnsearch), "train", "--config", str(out / "recipe.yaml"),
                           "--out", str(tmp_path / "run"), "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(the trial's, exactly)" in proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_accuracy"] == best.user_attrs["val_accuracy"]
    assert metrics["curves"]["val_loss"] == best.user_attrs["curves"]["val_loss"]
    retrained = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert retrained.keys() == kept.keys()
    assert all(torch.equal(retrained[k], kept[k]) for k in kept)  # bit for bit

    # --final: the same recipe trained on train+val and scored on the test split.
    assert main(["train", "--config", str(out / "recipe.yaml"), "--out", str(tmp_path / "final"), "--final"]) == 0
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["evaluated_on"].startswith("test") and 0.0 <= final["test_accuracy"] <= 1.0


def test_train_then_train_final_keep_both_folders_and_name_the_split(study_url: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--study", STUDY, "--storage", study_url, "--out", "exported", "--no-weights"]) == 0
    best = _best(study_url)
    assert main(["train", "--config", "exported/recipe.yaml"]) == 0
    assert main(["train", "--config", "exported/recipe.yaml", "--final"]) == 0
    out = capsys.readouterr().out
    runs = sorted(p.name for p in (tmp_path / "cnnsearch-train").iterdir())
    assert runs == [f"{STUDY}-trial{best.number}", f"{STUDY}-trial{best.number}-final"]
    search, final = (json.loads((tmp_path / "cnnsearch-train" / r / "metrics.json").read_text()) for r in runs)
    assert search["val_accuracy"] == best.user_attrs["val_accuracy"]
    assert "test_accuracy" not in search
    assert "val_accuracy" not in final and "val_loss" not in final and "val_accuracy" not in final["curves"]
    assert 0.0 <= final["test_accuracy"] <= 1.0 and len(final["curves"]["test_accuracy"]) == final["epochs_run"]
    assert f"test accuracy {final['test_accuracy']:.4f}" in out


def test_export_a_chosen_trial_as_json_next_to_the_users_readme(study_url: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name=STUDY, storage=open_storage(study_url, heartbeat_interval=None))
    chosen = min(t.number for t in study.get_trials() if t.state == TrialState.COMPLETE)
    out = tmp_path / "repo"
    out.mkdir()
    (out / "README.md").write_text("# my training repo\n")
    assert main(["export", "--study", STUDY, "--storage", study_url, "--out", str(out), "--trial", str(chosen),
                 "--format", "json", "--no-weights"]) == 0
    recipe = load_recipe(out / "recipe.json")
    assert recipe["provenance"]["trial"] == chosen and recipe["weights"] is None
    assert (out / "README.md").read_text() == "# my training repo\n"
    assert "No weights" in (out / "README.cnnsearch.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["README.cnnsearch.md", "README.md", "recipe.json"]


@pytest.mark.slow
def test_an_export_that_hits_the_file_size_limit_leaves_nothing_behind(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import resource
    import sqlite3

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    (tmp_path / "wide.yaml").write_text("params:\n  epochs: 1\n  width: 128\n  depth: 2\n")
    assert main(["run", "--study", "wide", "--dataset", "digits", "--space", "wide.yaml", "--trials", "1",
                 "--keep-checkpoints", "--no-progress"]) == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "cnnsearch.db")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # so that reading the study writes nothing large
    # The kept weights; the trial's resume checkpoint is kept beside them (--keep-checkpoints).
    (checkpoint,) = [p for p in (tmp_path / "cnnsearch-artifacts").iterdir() if not p.name.startswith("resume-")]
    limit = checkpoint.stat().st_size // 2  # `ulimit -f`: the weights (about 1 MB) cannot be written whole
    assert limit > (tmp_path / "cnnsearch.db").stat().st_size

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "training-repo"
    proc = subprocess.run([*CLI, "export", "--study", "wide", "--out", str(out)], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "File too large" in proc.stderr
    assert not out.exists()  # neither a temporary file nor the folder the export made for it


def test_export_refuses_a_trial_that_did_not_complete(study_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    study = optuna.load_study(study_name=STUDY, storage=open_storage(study_url, heartbeat_interval=None))
    running = study.ask().number
    assert main(["export", "--study", STUDY, "--storage", study_url, "--out", str(tmp_path / "x"),
                 "--trial", str(running)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"trial #{running}" in err and "RUNNING" in err
    assert not (tmp_path / "x").exists()


def test_export_of_a_study_without_a_completed_trial_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    create_or_resume(open_storage(url, heartbeat_interval=None), "empty",
                     StudySpec(space=load_space("tiny"), dataset="digits"))
    assert main(["export", "--study", "empty", "--storage", url, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cnnsearch: error: study 'empty' has no completed trial to export yet; run more trials or wait " \
                  "for a running one to finish"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("config: [1, 2", "not valid YAML"),
    ("just: a mapping\n", "not a cnnsearch recipe"),
    ("format: cnnsearch-recipe/1\nconfig: {}\n", "missing key(s) input_shape, num_classes, classes, data"),
    ("format: cnnsearch-recipe/1\nconfig: {lr: fast}\ninput_shape: [1, 8, 8]\nnum_classes: 10\nclasses: []\n"
     "data: {dataset: digits}\n", "lr='fast' is not accepted"),
])
def test_a_bad_recipe_gets_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture, text: str,
                                                    expected: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and expected in err


def test_a_recipe_with_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    lines = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 strings
    path = tmp_path / "recipe.yaml"
    path.write_text("format: cnnsearch-recipe/1\nconfig:\n" + "\n".join(lines) + "\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "alias" in err


def test_build_model_takes_a_recipe_or_a_config_with_its_shape() -> None:
    config = {"depth": 1, "width": 4, "seed": 3}
    model = build_model(config, (1, 8, 8), 10)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    typed = build_model(TrialConfig.from_dict(config), (1, 8, 8), 10)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), typed.parameters(), strict=True))
    with pytest.raises(CnnSearchError, match="give input_shape"):
        build_model(config)


def test_an_old_recipe_with_a_partial_config_loads_with_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("format: cnnsearch-recipe/1\nconfig: {depth: 1, width: 4, seed: 3}\ninput_shape: [1, 8, 8]\n"
                    "num_classes: 10\nclasses: []\ndata: {dataset: digits}\n")
    recipe = load_recipe(path)
    assert recipe["config"] == TrialConfig(depth=1, width=4, seed=3)
    assert build_model(recipe)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_checkpoint_that_cannot_be_kept_does_not_fail_the_trial(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from search.study.checkpoints import keep_checkpoint
    from storage.errors import StorageError

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'a.db'}", heartbeat_interval=None))
    trial = study.ask()
    model = build_model({"depth": 1, "width": 4}, (1, 8, 8), 10)
    assert keep_checkpoint(trial, model) is not None  # next to the database: a-artifacts/
    assert len(list((tmp_path / "a-artifacts").iterdir())) == 1

    def no_store(url: str) -> None:
        raise StorageError("cannot create artifact directory /full: No space left on device")

    monkeypatch.setattr("search.study.checkpoints.artifact_store_for", no_store)
    second = study.ask()
    assert keep_checkpoint(second, model) is None
    study.tell(second, 0.5)
    frozen = study.trials[second.number]
    assert frozen.state == TrialState.COMPLETE
    assert "No space left on device" in frozen.user_attrs["artifact_error"]
