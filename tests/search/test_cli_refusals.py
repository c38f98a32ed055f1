"""What `run` and `best` say when every model was refused before it trained."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.cli import main

SPACE = """
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  width: {type: categorical, choices: [4, 8]}
  epochs: 1
  depth: 1
"""


def test_when_max_params_refuses_every_model_run_and_best_name_the_limit_and_the_smallest_model(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "small.yaml").write_text(SPACE)
    assert main(["run", "--study", "mp", "--dataset", "digits", "--space", "small.yaml", "--no-progress",
                 "--sampler", "random", "--trials", "4", "--max-params", "100"]) == 0
    trials = optuna.load_study(study_name="mp", storage="sqlite:///cnnsearch.db").get_trials()
    assert {t.user_attrs["fail_reason"] for t in trials} == {"constraint"}
    smallest = min(t.user_attrs["params"] for t in trials)
    expected = (f"--max-params 100 refused all 4 models before training; the smallest has {smallest} "
                "parameters")
    run_out = capsys.readouterr().out
    assert expected in run_out and "no trial completed yet" not in run_out, run_out
    assert main(["best", "--study", "mp"]) == 0
    best_out = capsys.readouterr().out
    assert expected in best_out, best_out


def test_when_every_model_is_too_big_for_the_memory_run_says_so_with_the_estimate(
        workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "small.yaml").write_text(SPACE)
    monkeypatch.setenv("CNNSEARCH_WORKER_MEMORY_MB", "0.001")
    assert main(["run", "--study", "mem", "--dataset", "digits", "--space", "small.yaml", "--no-progress",
                 "--sampler", "random", "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert ("no trial completed: all 2 models were refused before training as too big for the worker's memory; "
            "the smallest: training needs about") in out, out
    assert "1.0 kB available" in out
