"""Preemption: SIGTERM hands the running trial back to the study, and another worker finishes it.

What clouds, Kubernetes and SLURM send before they stop a machine is SIGTERM; the trial it
interrupts goes back to the study as WAITING (the same trial, no budget used), for any worker to
claim. A person's Ctrl-C fails it (``interrupted``) unless ``--on-interrupt requeue`` asks for the
same hand-back.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState

import search.study.worker
from search.cli import main
from search.study.signals import stop_on_signals
from search.study.worker import WorkerSettings, worker_loop
from tests.support.cli import CLI, clean_env, sigint_default
from tests.support.workers import SLOW_SPACE, make_study, trials_of, wait_for


def _worker(workdir: Path, url: str, study: str, *args: str) -> subprocess.Popen:
    """`cnnsearch worker` as a user starts it in a terminal (Ctrl-C reaches it)."""
    return subprocess.Popen([*CLI, "worker", "--study", study, "--storage", url, "--device", "cpu", "--threads", "1",
                             *args], cwd=workdir, env=clean_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=sigint_default)


def _stop_mid_trial(workdir: Path, url: str, study: str, signum: int, *args: str) -> tuple[int, str]:
    """Start a worker, send it ``signum`` once its trial has trained an epoch; its exit code and stderr."""
    proc = _worker(workdir, url, study, *args)
    try:
        wait_for(lambda: any(t.intermediate_values for t in trials_of(url, study, TrialState.RUNNING)), 120,
                 "a trial training")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_hands_the_trial_back_and_a_second_worker_finishes_it(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'preempt.db'}"
    make_study(url, "p", SLOW_SPACE, budget=1)
    code, err = _stop_mid_trial(workdir, url, "p", signal.SIGTERM)
    assert code == 143, err
    assert "handed back to the study (waiting)" in err
    (trial,) = trials_of(url, "p")
    assert trial.state == TrialState.WAITING  # the same trial, not FAIL and a copy
    assert trial.user_attrs["handed_back"] == 1
    assert "fail_reason" not in trial.user_attrs
    # Saved at once: the state after the training step the signal came in, not the last epoch's.
    epoch, step = trial.user_attrs["checkpoint_epoch"], trial.user_attrs["checkpoint_step"]
    assert epoch >= 1 and step >= 1

    assert main(["worker", "--study", "p", "--storage", url, "--device", "cpu", "--threads", "1"]) == 0
    (finished,) = trials_of(url, "p")
    assert (finished.number, finished.state) == (trial.number, TrialState.COMPLETE)
    assert finished.params == trial.params
    assert finished.user_attrs["resume_note"] == (f"resumed from the checkpoint after epoch {epoch}, "
                                                  f"step {step} of epoch {epoch + 1}")
    assert sorted(finished.intermediate_values) == list(range(1, 31))  # every epoch reported once


@pytest.mark.slow
@pytest.mark.parametrize("flags, state", [((), TrialState.FAIL), (("--on-interrupt", "requeue"), TrialState.WAITING)])
def test_ctrl_c_fails_the_trial_unless_asked_to_hand_it_back(workdir: Path, flags: tuple[str, ...],
                                                             state: TrialState) -> None:
    url = f"sqlite:///{workdir / 'ctrl-c.db'}"
    make_study(url, "c", SLOW_SPACE, budget=1)
    code, err = _stop_mid_trial(workdir, url, "c", signal.SIGINT, *flags)
    assert code == 130, err
    trials = trials_of(url, "c")
    assert trials[0].state == state
    if state == TrialState.FAIL:  # as before: failed with its reason, queued again outside the budget
        assert "marked FAIL" in err
        assert trials[0].user_attrs["fail_reason"] == "interrupted"
        assert [t.state for t in trials[1:]] == [TrialState.WAITING]
        assert trials[1].system_attrs["failed_trial"] == trials[0].number
    else:
        assert "handed back" in err
        assert len(trials) == 1


def test_a_stop_while_the_trial_is_claimed_hands_it_back(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{workdir / 'claim.db'}"
    make_study(url, "w", SLOW_SPACE, budget=1)
    claim = search.study.worker.claim_waiting_trial

    def ctrl_c_while_claiming(*args: object) -> int | None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the claim, before training
        return claim(*args)

    monkeypatch.setattr(search.study.worker, "claim_waiting_trial", ctrl_c_while_claiming)
    # Ctrl-C as an interactive session gets it: pytest started in the background of a non-interactive shell
    # (nohup ... &) inherits SIGINT ignored, which stop_on_signals rightly keeps ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), stop_on_signals():
            worker_loop(url, "w", WorkerSettings(device="cpu"))
    finally:
        signal.signal(signal.SIGINT, previous)
    (trial,) = trials_of(url, "w")
    assert trial.state == TrialState.WAITING  # not left RUNNING for ever, not FAIL: nothing was trained
