"""A trial checkpoints every epoch: a retry of a killed worker's trial continues where it stopped.

The checkpoint lives in the study's artifact folder (``DB-artifacts/`` next to a SQLite file)
while its trial may still be continued, and is gone when the study is finished.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.study.objective
from search.cli import main
from search.study.checkpoints import resume_artifact_id
from search.study.errors import WorkerStopped
from search.study.objective import run_trial, worker_identity
from search.trial.data import make_split, prepare_data
from search.trial.datasets import load_dataset
from tests.support.cli import CLI, clean_env
from tests.support.workers import FAST_HEARTBEAT, load, make_study

# Every value fixed: a second study runs the same config with the same seed (trial 0's), uninterrupted.
# Batches of 4: epochs long enough (about 4x those of batch 16) that the poll, which loads the study, sees the
# victim's epoch-5 checkpoint before its trial ends (with 16, a quiet machine once trained all 10 in between).
TEN_EPOCHS = {"params": {"lr": {"type": "categorical", "choices": [0.01]}, "epochs": 10, "width": 8, "depth": 1,
                         "batch_size": 4, "dropout": 0.1, "aug_flip": True}}
TWO_EPOCHS = {"params": {"lr": {"type": "categorical", "choices": [0.01]}, "epochs": 2, "width": 4, "depth": 1,
                         "batch_size": 128}}


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def _resume_files(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.glob("*-artifacts/resume-*"))


def _worker(url: str, study: str) -> int:
    return main(["worker", "--study", study, "--storage", url, "--device", "cpu", "--threads", "1"])


def _wait_for_epoch(url: str, study: str, epoch: int, victim: subprocess.Popen, timeout: float = 300) -> None:
    """Until the running trial of ``study`` has written the checkpoint of ``epoch``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert victim.poll() is None, victim.communicate()
        try:
            running = optuna.load_study(study_name=study, storage=url).get_trials(states=(TrialState.RUNNING,))
            if running and running[0].user_attrs.get("checkpoint_epoch", 0) >= epoch:
                return
        except KeyError:  # not created yet
            pass
        time.sleep(0.1)
    pytest.fail(f"no checkpoint of epoch {epoch} within {timeout} s")


@pytest.mark.slow
def test_the_retry_of_a_worker_killed_mid_trial_trains_only_the_rest_and_ends_as_an_uninterrupted_run(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{workdir / 'killed.db'}"
    make_study(url, "k", TEN_EPOCHS, budget=1)
    victim = subprocess.Popen([*CLI, "worker", "--study", "k", "--storage", url, "--device", "cpu", "--threads", "1"],
                              cwd=workdir, env=clean_env(**FAST_HEARTBEAT), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_epoch(url, "k", 5, victim)
    finally:
        victim.kill()  # SIGKILL: nothing in the worker runs after it
        victim.communicate()
    for key, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(key, value)
    (dead,) = _trials(url, "k")
    killed_after = dead.user_attrs["checkpoint_epoch"]
    assert killed_after >= 5 and len(dead.intermediate_values) < 10
    capsys.readouterr()
    assert main(["status", "--study", "k", "--storage", url]) == 0  # still RUNNING: its worker is not known dead yet
    assert f"resumes after epoch {killed_after}" in capsys.readouterr().out
    time.sleep(4)  # past the grace period: the next worker finds the trial stale

    assert _worker(url, "k") == 0
    dead, retry = _trials(url, "k")
    assert dead.state == TrialState.FAIL and retry.system_attrs["failed_trial"] == dead.number
    assert retry.state == TrialState.COMPLETE
    resumed_after = retry.user_attrs["resumed_from_epoch"]
    assert resumed_after >= killed_after
    assert retry.user_attrs["resume_note"] == f"resumed from the checkpoint after epoch {resumed_after}"
    assert sorted(retry.intermediate_values) == list(range(1, 11))  # every epoch, each once

    # The same config and seed, never interrupted.
    make_study(url, "ref", TEN_EPOCHS, budget=1)
    assert _worker(url, "ref") == 0
    (reference,) = _trials(url, "ref")
    assert reference.user_attrs["seed"] == retry.user_attrs["seed"]
    assert retry.user_attrs["curves"] == reference.user_attrs["curves"]
    assert retry.value == reference.value
    assert retry.intermediate_values == reference.intermediate_values
    assert _resume_files(workdir) == []  # the study is finished: no checkpoint left behind


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_skipped_with_a_note_and_the_trial_trains_from_the_start(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'corrupt.db'}"
    make_study(url, "c", TWO_EPOCHS, budget=1)
    artifacts = workdir / "corrupt-artifacts"
    artifacts.mkdir()
    (artifacts / resume_artifact_id("c", 0)).write_bytes(b"PK\x03\x04 half a file")
    assert _worker(url, "c") == 0
    (trial,) = _trials(url, "c")
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["resume_note"].startswith("checkpoint skipped, trained from the beginning: unreadable")
    assert "resumed_from_epoch" not in trial.user_attrs
    assert sorted(trial.intermediate_values) == [1, 2]
    assert _resume_files(workdir) == []


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_study_leaves_no_checkpoint_unless_asked_to_keep_them(workdir: Path, keep: bool) -> None:
    (workdir / "two.yaml").write_text("params:\n  width: {type: int, low: 4, high: 6}\n  epochs: 2\n  depth: 1\n")
    assert main(["run", "--study", "s", "--dataset", "digits", "--space", "two.yaml", "--trials", "2",
                 "--no-progress", "--device", "cpu", "--pruner", "none",
                 *(["--keep-checkpoints"] if keep else [])]) == 0
    trials = _trials("sqlite:///cnnsearch.db", "s")
    assert all(t.user_attrs["checkpoint_epoch"] == 2 for t in trials)  # each epoch was checkpointed
    expected = sorted(resume_artifact_id("s", t.number) for t in trials) if keep else []
    assert _resume_files(workdir) == expected


def _claim(study: optuna.Study) -> int:
    """Claim the study's waiting trial as a worker does; its id."""
    (trial,) = study.get_trials(states=(TrialState.WAITING,))
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
    return trial._trial_id


@pytest.mark.slow
def test_a_trial_stopped_mid_epoch_and_claimed_again_continues_there_and_reports_each_epoch_once(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder) -> None:
    url = f"sqlite:///{workdir / 'again.db'}"
    spec = make_study(url, "a", TWO_EPOCHS, budget=1)
    make_study(url, "ref", TWO_EPOCHS, budget=1)
    images = load_dataset("digits")
    data = prepare_data(images, make_split(images.labels, **spec.split_args()), "cpu")
    cpu, identity = torch.device("cpu"), worker_identity(torch.device("cpu"))
    steps = 0

    def stop() -> None:  # a worker told to stop, after the 3rd step of the 2nd epoch
        nonlocal steps
        steps += 1
        if steps == -(-len(data.train_y) // 128) + 3:
            raise WorkerStopped("signal SIGTERM")

    study, reference = load(url, "a"), load(url, "ref")
    for each in (study, reference):
        each.enqueue_trial({})  # the budget's sampled trial, which a worker makes when none waits
    trial_id = _claim(study)
    with monkeypatch.context() as handed_back:  # the trial is handed back as waiting rather than failed
        handed_back.setattr(search.study.objective, "_fail", lambda *args: None)
        with pytest.raises(WorkerStopped):
            run_trial(study, trial_id, spec, data, cpu, identity, stop=stop)
    study._storage.set_trial_state_values(trial_id, state=TrialState.WAITING)
    (waiting,) = _trials(url, "a")
    assert (waiting.user_attrs["checkpoint_epoch"], waiting.user_attrs["checkpoint_step"]) == (1, 3)
    assert list(waiting.intermediate_values) == [1]

    assert _claim(study) == trial_id  # claimed again: the same trial continues
    assert run_trial(study, trial_id, spec, data, cpu, identity).state == TrialState.COMPLETE
    assert run_trial(reference, _claim(reference), spec, data, cpu, identity).state == TrialState.COMPLETE
    (trial,), (uninterrupted,) = _trials(url, "a"), _trials(url, "ref")
    assert trial.user_attrs["resume_note"] == "resumed from the checkpoint after epoch 1, step 3 of epoch 2"
    assert trial.user_attrs["curves"] == uninterrupted.user_attrs["curves"]
    assert trial.intermediate_values == uninterrupted.intermediate_values
    assert not [w for w in recwarn if "already reported" in str(w.message)]
    assert _resume_files(workdir) == []
