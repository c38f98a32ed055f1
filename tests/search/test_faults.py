"""Trials that go wrong are recorded with their reason and the study goes on (or stops, when it must)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import torch
from optuna.trial import TrialState

from search.cli import main
from tests.support.cli import sigint_default


def _space(workdir: Path, name: str, body: str) -> str:
    (workdir / name).write_text("params:\n" + body)
    return name


def _trials(workdir: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{workdir / 'cnnsearch.db'}").get_trials()


def _run(*args: str) -> int:
    return main(["run", "--dataset", "digits", "--no-progress", "--pruner", "none", *args])


def test_nan_loss_prunes_the_trial_with_its_reason_and_the_study_goes_on(workdir: Path) -> None:
    space = _space(workdir, "nan.yaml", "  lr: 10.0\n  optimizer: sgd\n  momentum: 0.99\n  batch_norm: false\n"
                                        "  epochs: 3\n  width: 8\n  depth: 1\n")
    assert _run("--study", "nan", "--space", space, "--trials", "2") == 0
    trials = _trials(workdir, "nan")
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs["fail_reason"] == "nan_loss" for t in trials)
    assert "loss" in trials[0].user_attrs["fail_message"]


def test_a_trial_over_its_time_limit_is_pruned_with_reason_timeout(workdir: Path) -> None:
    space = _space(workdir, "slow.yaml", "  epochs: 200\n  width: 8\n  depth: 1\n")
    assert _run("--study", "to", "--space", space, "--trials", "1", "--trial-timeout", "1") == 0
    (t,) = _trials(workdir, "to")
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["fail_reason"] == "timeout"
    assert len(t.intermediate_values) < 200


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 17970000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
], ids=["torch-oom", "cudnn", "cublas", "host", "memoryerror"])
def test_out_of_memory_is_recorded_so_the_sampler_learns(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         error: BaseException) -> None:
    import search.trial.train

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(search.trial.train, "_fit", no_memory)
    space = _space(workdir, "oom.yaml", "  width: {type: int, low: 4, high: 8}\n  epochs: 1\n")
    # Not failures: a study that stops after one failure goes on.
    assert _run("--study", "oom", "--space", space, "--trials", "2", "--max-failures", "1") == 0
    trials = _trials(workdir, "oom")
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2  # PRUNED: TPE ranks it below every success
    assert [t.user_attrs["fail_reason"] for t in trials] == ["oom", "oom"]
    assert trials[0].user_attrs["fail_message"].startswith("out of ")


def test_a_model_too_big_for_the_host_to_count_for_max_params_is_out_of_memory_too(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import search.study.objective

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 8053063680 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(search.study.objective, "build_model", no_memory)  # the model --max-params counts
    space = _space(workdir, "big.yaml", "  width: {type: int, low: 4, high: 8}\n  epochs: 1\n")
    assert _run("--study", "big", "--space", space, "--trials", "2", "--max-failures", "1",
                "--max-params", "100000") == 0
    trials = _trials(workdir, "big")
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert [t.user_attrs["fail_reason"] for t in trials] == ["oom", "oom"]
    assert trials[0].user_attrs["fail_message"].startswith("out of host memory: ")


def test_consecutive_failures_stop_the_study_with_the_last_reason(workdir: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # A pretrained backbone whose weights are not on this offline machine: every trial fails.
    space = _space(workdir, "fail.yaml", "  model: resnet18\n  pretrained: true\n  lr: {type: float, low: 0.001, "
                                         "high: 0.01}\n  epochs: 1\n")
    assert _run("--study", "f", "--space", space, "--trials", "6", "--max-failures", "2") == 1
    err = capsys.readouterr().err
    assert "2 trials failed in a row (--max-failures 2); last reason: ModelError" in err
    trials = _trials(workdir, "f")
    assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2
    assert all("weights" in t.user_attrs["fail_message"] for t in trials[:2])
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, says", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_marks_the_running_trial_failed_and_exits_nonzero(workdir: Path, signum: int, code: int,
                                                                   says: str) -> None:
    _space(workdir, "slow.yaml", "  epochs: 200\n  width: 16\n  depth: 1\n")
    db = workdir / "term.db"
    env = {**os.environ, "CNNSEARCH_STORAGE": f"sqlite:///{db}"}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--study", "t", "--dataset", "digits",
                             "--space", "slow.yaml", "--trials", "2", "--no-progress"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if optuna.load_study(study_name="t", storage=env["CNNSEARCH_STORAGE"]).get_trials(
                        states=(TrialState.RUNNING,)):
                    break
            except (KeyError, sqlalchemy.exc.OperationalError):  # the run is still creating it
                pass
            time.sleep(0.5)
        else:
            pytest.fail("no trial started")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code
    assert says in err
    trials = optuna.load_study(study_name="t", storage=env["CNNSEARCH_STORAGE"]).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL] == ["interrupted"]
