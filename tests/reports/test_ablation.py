"""The ablation table, from a constructed study whose answer is known."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from reports.ablation import ablation
from reports.report import write_report

BN = CategoricalDistribution([False, True])
OPT = CategoricalDistribution(["sgd", "adam", "adamw"])
LR = FloatDistribution(1e-4, 1e-1, log=True)
SHIFT = IntDistribution(0, 3)

# (batch_norm, optimizer, aug_translate, val accuracy)
TRIALS = [
    (True, "sgd", 0, 0.90), (True, "adam", 1, 0.92), (True, "sgd", 2, 0.94), (True, "adam", 0, 0.96),
    (True, "adamw", 3, 0.98),
    (False, "sgd", 0, 0.50), (False, "adam", 1, 0.60), (False, "adam", 0, 0.70), (False, "adamw", 2, 0.80),
]


@pytest.fixture
def study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, (bn, opt, shift, acc) in enumerate(TRIALS):
        study.add_trial(create_trial(
            params={"batch_norm": bn, "optimizer": opt, "aug_translate": shift, "lr": 10 ** -(1 + i % 3)},
            distributions={"batch_norm": BN, "optimizer": OPT, "aug_translate": SHIFT, "lr": LR},
            value=acc, user_attrs={"val_accuracy": acc}))
    # A pruned trial with batch norm: it never finished, so it must not count on either side.
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"batch_norm": True, "optimizer": "sgd",
                                                                    "aug_translate": 0, "lr": 0.01},
                                 distributions={"batch_norm": BN, "optimizer": OPT, "aug_translate": SHIFT, "lr": LR},
                                 user_attrs={"val_accuracy": 0.1}))
    return study


def _row(rows: list[dict], param: str, choice: str) -> dict:
    matches = [r for r in rows if r["param"] == param and r["choice"] == choice]
    assert len(matches) == 1, (param, choice, rows)
    return matches[0]


def test_toggle_figures_match_the_trials(study: optuna.Study) -> None:
    rows = ablation(study.get_trials())
    bn = _row(rows, "batch_norm", "True")
    assert bn["with"]["n"] == 5 and bn["without"]["n"] == 4
    assert bn["with"]["best"] == 0.98 and bn["with"]["median"] == pytest.approx(0.94)
    assert bn["without"]["best"] == 0.80 and bn["without"]["median"] == pytest.approx(0.65)
    assert bn["diff_median"] == pytest.approx(0.29)
    assert bn["enough"] and bn["note"] == ""
    # Every "with" accuracy is >= 0.90 and every "without" <= 0.80, so each bootstrap difference of
    # medians is at least 0.10: the interval excludes 0, and contains the observed difference.
    low, high = bn["diff_ci"]
    assert 0.10 <= low <= 0.29 <= high <= 0.48
    lo, hi = bn["with"]["ci"]
    assert 0.90 <= lo <= 0.94 <= hi <= 0.98


def test_each_categorical_choice_against_the_rest(study: optuna.Study) -> None:
    rows = ablation(study.get_trials())
    assert [r["choice"] for r in rows if r["param"] == "optimizer"] == ["sgd", "adam", "adamw"]
    adam = _row(rows, "optimizer", "adam")
    assert (adam["with"]["n"], adam["without"]["n"]) == (4, 5)
    assert adam["with"]["median"] == pytest.approx((0.70 + 0.92) / 2)
    assert adam["without"]["best"] == 0.98
    adamw = _row(rows, "optimizer", "adamw")
    assert adamw["with"]["n"] == 2 and adamw["with"]["best"] == 0.98
    assert not adamw["enough"] and adamw["diff_ci"] is None and adamw["with"]["ci"] is None
    assert "too few trials" in adamw["note"] and "with 'adamw': 2" in adamw["note"]


def test_augmentation_strength_is_ablated_as_on_against_off(study: optuna.Study) -> None:
    rows = ablation(study.get_trials())
    shift = _row(rows, "aug_translate", "> 0")
    assert (shift["with"]["n"], shift["without"]["n"]) == (5, 4)
    assert shift["without"]["best"] == 0.96
    assert not [r for r in rows if r["param"] == "lr"]  # a continuous non-augmentation parameter is not a toggle


def test_same_trials_give_the_same_intervals(study: optuna.Study) -> None:
    assert ablation(study.get_trials()) == ablation(study.get_trials())


def test_report_shows_the_ablation_of_a_constructed_study(study: optuna.Study, tmp_path: Path) -> None:
    html = (write_report(study, tmp_path / "report") / "index.html").read_text()
    row = html[html.index('data-param="batch_norm" data-choice="True"'):]
    row = row[:row.index("</tr>")]
    for figure in ("<td class=\"n\">5</td>", "0.98", "0.94", "<td class=\"n\">4</td>", "0.65", "+0.2900"):
        assert figure in row, figure
    adamw = html[html.index('data-param="optimizer" data-choice="adamw"'):]
    assert "too few trials" in adamw[:adamw.index("</tr>")]
