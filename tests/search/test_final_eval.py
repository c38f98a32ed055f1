"""The final evaluation: the best config retrained on train+val with several seeds, tested on test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from reports.report import write_report
from search.cli import main
from search.results.final_eval import CORRUPTIONS, final_evaluation
from storage import open_storage
from tests.support.studies import STUDY


@pytest.fixture
def study(tmp_path: Path, tiny_study: Callable[[Path], str]) -> Iterator[optuna.Study]:
    url = tiny_study(tmp_path / "db")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine
    yield optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat_interval=None))
    torch.set_num_threads(threads)


def test_best_config_is_retrained_per_seed_and_tested_on_the_held_out_split(study: optuna.Study,
                                                                           tmp_path: Path) -> None:
    result = final_evaluation(study, 1, 2, device="cpu")
    best = max((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    sizes = study.user_attrs["split_sizes"]["sizes"]
    assert (result["train_images"], result["test_images"]) == (sizes["train"] + sizes["val"], sizes["test"])
    [model] = result["models"]
    assert model["trial"] == best.number and model["config"] == best.user_attrs["config"]
    runs = model["runs"]
    assert [r["seed"] for r in runs] == [best.user_attrs["seed"], best.user_attrs["seed"] + 1]

    matrix = np.array(model["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 2 * sizes["test"]  # summed over the two seeds
    assert np.trace(matrix) / matrix.sum() == pytest.approx(np.mean([r["accuracy"] for r in runs]))
    for run in runs:
        for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr", "top5_accuracy"):
            assert 0.0 <= run[key] <= 1.0, key
        assert run["top5_accuracy"] >= run["accuracy"]  # digits has 10 classes: top-5 is reported
        assert run["corrupted"].keys() == CORRUPTIONS.keys()
        assert run["train_seconds"] > 0 and run["inference_ms"] > 0

    html = (write_report(study, tmp_path / "report", final_eval=result) / "index.html").read_text()
    section = html[html.index('<section id="final">'):html.index('<section id="failures">')]
    mean, std = np.mean([r["accuracy"] for r in runs]), np.std([r["accuracy"] for r in runs], ddof=1)
    assert f"{mean:.4f} ± {std:.4f}" in section
    assert f"confusion matrix of trial {best.number}" in section


@pytest.mark.parametrize(("flag", "value"), [("--final-eval", "-1"), ("--seeds", "0")])
def test_bad_final_eval_flags_are_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          flag: str, value: str) -> None:
    args = ["report", "--study", STUDY, "--storage", f"sqlite:///{tmp_path / 'none.db'}", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnsearch: error: argument {flag}: must be at least") and err.count("\n") == 1
    assert not (tmp_path / "none.db").exists()


def test_a_retrain_that_runs_out_of_memory_is_one_line_and_no_report(tmp_path: Path,
                                                                    tiny_study: Callable[[Path], str],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    import search.results.final_eval

    def no_memory(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")

    monkeypatch.setattr(search.results.final_eval, "fit", no_memory)
    url = tiny_study(tmp_path / "db")
    out = tmp_path / "report"
    assert main(["report", "--study", STUDY, "--storage", url, "--final-eval", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cnnsearch: error: final evaluation of trial #")
    assert "stopped: out of memory on cpu: cuDNN error: CUDNN_STATUS_ALLOC_FAILED" in err[-1]
    assert not out.exists()
