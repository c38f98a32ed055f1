"""`cnnsearch report` on a real finished study: every section, numbers that match the storage.

The browser tests open the report in headless Chromium (Debian's package at /usr/bin/chromium);
they are skipped without it, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from PIL import Image

from reports.errors import ReportError
from reports.report import write_report
from reports.summary import format_value
from search.cli import main
from search.study.spec import StudySpec, create_or_resume
from spaces import load_space
from storage import open_storage
from tests.support.studies import STUDY

SECTIONS = ("warnings", "overview", "top", "history", "importances", "curves", "ablation", "final", "failures")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, tiny_study: Callable[[Path], str]) -> tuple[str, Path]:
    """The shared finished study plus a crashed and a running trial, and its report (written once: plots cost)."""
    root = tmp_path_factory.mktemp("report")
    url = tiny_study(root / "db")
    study = _load(url)
    # A crashed trial as a worker records one: the failures section must count it.
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={
        "fail_reason": "oom", "fail_message": "out of memory on cuda:0: tried to allocate 2 GiB"}))
    study.ask()  # a trial some worker is running right now
    out = root / "report"
    assert _report(url, out) == 0
    return url, out


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat_interval=None))


def _report(url: str, out: Path, *extra: str) -> int:
    return main(["report", "--study", STUDY, "--storage", url, "--out", str(out), *extra])


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _cell(html: str, cell_id: str) -> str:
    match = re.search(rf'<td id="{cell_id}">(.*?)</td>', html, re.S)
    assert match, f"no cell {cell_id} in the report"
    return re.sub(r"<[^>]+>", "", match.group(1))


def test_report_of_a_finished_study_matches_the_storage(reported: tuple[str, Path]) -> None:
    url, out = reported
    study = _load(url)
    html = (out / "index.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done, "the shared study has no completed trial"
    counts = _cell(html, "counts")
    for state in TrialState:
        n = sum(1 for t in trials if t.state == state)
        assert (f"{state.name} {n}" in counts) == (n > 0), counts
    best = max(done, key=lambda t: (t.value, -t.number))
    assert f"trial #{best.number}: val accuracy {format_value(best.value)}" in " ".join(_cell(html, "best").split())
    compute = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    assert _seconds(compute) in _cell(html, "compute")

    ranked = sorted(done, key=lambda t: (-t.value, t.number))
    assert [int(n) for n in re.findall(r'class="top-row" data-trial="(\d+)"', html)] == [t.number for t in ranked]
    # history, parallel coordinates, importances, learning curves: embedded, nothing fetched from the network.
    assert html.count('src="data:image/png;base64,') >= 4
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html

    failures = dict(re.findall(r'class="failure-row" data-reason="(\w+)">.*?<td class="n">(\d+)</td>', html, re.S))
    assert failures.get("oom") == "1"
    assert int(failures.get("pruned", 0)) == sum(1 for t in trials if t.state == TrialState.PRUNED)
    assert "tried to allocate 2 GiB" in html

    bn_on = sum(1 for t in done if t.params.get("batch_norm") is True)
    row = re.search(r'data-param="batch_norm" data-choice="True">.*?<td class="n">(\d+)</td>', html, re.S)
    assert row and int(row.group(1)) == bn_on

    summary = (out / "summary.md").read_text()
    assert f"| #{best.number} | {format_value(best.user_attrs['val_accuracy'])} |" in summary
    assert "## Ablation" in summary and "## Failures" in summary


def test_a_running_study_is_reported_as_a_snapshot(reported: tuple[str, Path]) -> None:
    html = (reported[1] / "index.html").read_text()
    assert "RUNNING 1" in _cell(html, "counts")
    assert "still running (1 trial(s) in progress)" in html


def test_trials_csv_round_trips_through_pandas(reported: tuple[str, Path]) -> None:
    url, out = reported
    df = pd.read_csv(out / "trials.csv")
    trials = _load(url).get_trials()
    assert df["number"].tolist() == [t.number for t in trials]
    assert df["state"].tolist() == [t.state.name for t in trials]
    # Optuna names the objective column after the study's metric name ("value_val_accuracy") when it has one.
    [value_column] = [c for c in df.columns if c == "value" or c.startswith("value_")]
    for t, row, value in zip(trials, df.itertuples(), df[value_column], strict=True):
        assert (math.isnan(value) if t.value is None else value == t.value)
        if t.state == TrialState.COMPLETE:
            assert row.config_lr == t.user_attrs["config"]["lr"]
            assert row.config_width == t.user_attrs["config"]["width"]
            assert json.loads(row.user_attrs_curves) == t.user_attrs["curves"]
            assert row.user_attrs_train_seconds == t.user_attrs["train_seconds"]


def _empty_study(tmp_path: Path, name: str = "empty") -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    study = create_or_resume(open_storage(url, heartbeat_interval=None), name,
                             StudySpec(space=load_space("tiny"), dataset="digits"))
    return url, study


def test_empty_study_renders_an_empty_state_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url, _ = _empty_study(tmp_path)
    assert main(["report", "--study", "empty", "--storage", url]) == 0
    out = tmp_path / "cnnsearch-reports" / "empty"  # the default --out
    html = (out / "index.html").read_text()
    assert "No completed trial yet" in html and "no trials" in _cell(html, "counts")
    assert "base64" not in html
    assert len(pd.read_csv(out / "trials.csv")) == 0


def test_names_and_messages_from_the_storage_are_escaped(tmp_path: Path) -> None:
    name = "<img src=x onerror=alert(1)>"
    _, study = _empty_study(tmp_path, name)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={
        "fail_reason": "error", "fail_message": "ValueError: <script>alert(2)</script>"}))
    html = (write_report(study, tmp_path / "report") / "index.html").read_text()
    assert name not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>alert(2)" not in html and "&lt;script&gt;alert(2)" in html


def test_unwritable_out_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, _ = _empty_study(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(blocker / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "--out" in err
    assert blocker.read_text() == "not a directory"


def test_a_folder_that_is_not_a_report_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, _ = _empty_study(tmp_path)
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(mine)]) == 2
    assert "not a cnnsearch report" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_folder_with_an_index_html_of_its_own_is_never_touched(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    url, _ = _empty_study(tmp_path)
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (site / "index.html").write_text("<h1>my home page</h1>")
    (site / "notes.txt").write_text("keep me")
    (site / "images" / "logo.png").write_bytes(b"png")
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(site)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(site) in err and "not a cnnsearch report" in err
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == before


def test_another_studys_report_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, _ = _empty_study(tmp_path)
    create_or_resume(open_storage(url, heartbeat_interval=None), "other",
                     StudySpec(space=load_space("tiny"), dataset="digits"))
    out = tmp_path / "report"
    assert main(["report", "--study", "other", "--storage", url, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(out)]) == 2
    assert "study 'other'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_new_report_replaces_only_its_own_files(tmp_path: Path) -> None:
    url, _ = _empty_study(tmp_path)
    out = tmp_path / "report"
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("my notes on this study")
    (out / "images").mkdir()
    (out / "images" / "figure.png").write_bytes(b"png")
    (out / "summary.md").write_text("stale")
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["images", "index.html", "notes.txt", "summary.md", "trials.csv"]
    assert (out / "notes.txt").read_text() == "my notes on this study"
    assert (out / "images" / "figure.png").read_bytes() == b"png"
    assert (out / "summary.md").read_text().startswith("# Study `empty`")


def test_reports_of_other_studies_stay_in_their_own_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url, _ = _empty_study(tmp_path)
    assert main(["report", "--study", "empty", "--storage", url]) == 0
    reports = tmp_path / "cnnsearch-reports"
    before = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    for name in ("", ".", "..", "../x", str(tmp_path / "elsewhere")):
        assert main(["report", "--study", name, "--storage", url]) == 2
    assert {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("empty.db")) == ["cnnsearch-reports"]


def test_a_failed_write_leaves_the_previous_report_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, study = _empty_study(tmp_path)
    out = tmp_path / "reports" / "report"
    write_report(study, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("storage.staging.os.replace", refuse)
    with pytest.raises(ReportError, match="No space left on device"):
        write_report(study, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["report"]  # no temporary directory left behind


def test_final_evaluation_section_shows_the_handed_in_results(tmp_path: Path) -> None:
    _, study = _empty_study(tmp_path)
    runs = [
        {"seed": 3, "accuracy": 0.9, "precision_macro": 0.91, "recall_macro": 0.89, "f1_macro": 0.9,
         "roc_auc_ovr": 0.99, "top5_accuracy": 1.0, "train_seconds": 2.0, "inference_ms": 0.01,
         "corrupted": {"noise_0.1": 0.85, "brightness_+0.2": 0.7}},
        {"seed": 4, "accuracy": 0.8, "precision_macro": 0.81, "recall_macro": 0.79, "f1_macro": 0.8,
         "roc_auc_ovr": 0.97, "top5_accuracy": 0.98, "train_seconds": 4.0, "inference_ms": 0.03,
         "corrupted": {"noise_0.1": 0.8, "brightness_+0.2": 0.6}},
    ]
    final = {"top_k": 1, "seeds": 2, "device": "cpu", "train_images": 1617, "test_images": 180,
             "classes": [str(i) for i in range(10)],
             "corruptions": {"noise_0.1": "Gaussian noise σ=0.1", "brightness_+0.2": "brightness +0.2"},
             "models": [{"trial": 3, "val_accuracy": 0.95, "params": {}, "config": {}, "runs": runs,
                         "confusion_matrix": [[18 if i == j else 0 for j in range(10)] for i in range(10)]}]}
    out = write_report(study, tmp_path / "report", final_eval=final)
    html = (out / "index.html").read_text()
    section = html[html.index('<section id="final">'):html.index('<section id="failures">')]
    assert 'data-trial="3"' in section
    assert "0.8500 ± 0.0707" in section  # test accuracy: mean and sample std of 0.9 and 0.8
    assert "0.0250 ± 0.0354" in section  # drop under noise 0.1: (0.05, 0.0)
    assert "0.2000 ± 0.0000" in section  # drop under brightness: (0.2, 0.2)
    assert "confusion matrix of trial 3" in section
    assert "0.8500 ± 0.0707" in (out / "summary.md").read_text()


# --- adjustments and noise, on a study written here ------------------------------------------------

CLAMPED = "depth 4 clamped to 2: the 8x8 input holds 2 downsampling stages"


def _clamped_study(tmp_path: Path) -> optuna.Study:
    """Trials that asked depth 2 or 4 on 8x8 images (all built depth 2); by chance the depth-4 ones scored higher."""
    _, study = _empty_study(tmp_path, "built")
    study.set_user_attr("split_sizes", {"seed": 0, "sizes": {"train": 1437, "val": 180, "test": 180}})
    dists = {"depth": optuna.distributions.IntDistribution(1, 4),
             "lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    for i in range(12):
        asked = 4 if i % 2 else 2
        lr = 10 ** (-3 + 2 * i / 11)
        acc = 0.93 + (0.04 if asked == 4 else 0.0) + 0.001 * (i % 3)
        study.add_trial(optuna.trial.create_trial(
            params={"depth": asked, "lr": lr}, distributions=dists, value=acc,
            user_attrs={"config": {"depth": 2, "lr": lr, "seed": i}, "val_accuracy": acc,
                        "notes": [CLAMPED] if asked == 4 else []}))
    return study


def test_notes_and_built_values_are_shown_and_importances_use_what_was_built(tmp_path: Path) -> None:
    out = write_report(_clamped_study(tmp_path), tmp_path / "report")
    summary = (out / "summary.md").read_text()
    html = (out / "index.html").read_text()
    for text in (summary, html):
        assert CLAMPED in text
        assert "depth=2 (asked 4)" in text
    importances = dict(re.findall(r"^- (\w+): ([0-9.]+)$", summary, re.M))
    assert importances, summary
    assert float(importances["depth"]) == 0.0, importances  # depth 2 and 4 built the same network
    assert max(importances, key=lambda k: float(importances[k])) == "lr"


def test_the_report_gives_one_noise_margin(tmp_path: Path) -> None:
    out = write_report(_clamped_study(tmp_path), tmp_path / "report")
    for text in ((out / "summary.md").read_text(), (out / "index.html").read_text()):
        margins = set(re.findall(r"noise margin of ([0-9.]+ ?%)", text))
        assert len(margins) == 1, margins
        assert text.count("2 standard errors") == 1


# --- in a browser ---------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=8000",
                  "--window-size=1280,2400", "--enable-logging=stderr", "--v=0"]


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        message = f"headless Chromium not found at {CHROMIUM} (Debian: apt-get install -y chromium)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def _open_in_chromium(chromium: str, page: Path, tmp_path: Path) -> tuple[list[str], Image.Image]:
    """Console messages (Chromium logs each as a CONSOLE line) and a screenshot of ``page``."""
    shot = tmp_path / "shot.png"
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line], Image.open(shot).convert("RGB")


@pytest.mark.browser
def test_report_renders_in_chromium_without_console_errors(reported: tuple[str, Path], chromium: str,
                                                           tmp_path: Path) -> None:
    console, shot = _open_in_chromium(chromium, reported[1] / "index.html", tmp_path)
    assert console == []
    # Plots and tables, not a blank page: many distinct colours, and much of it not the background.
    small = shot.resize((320, 600))
    colours = small.getcolors(maxcolors=small.width * small.height)
    assert len(colours) > 200
    assert max(colours)[0] < 0.8 * small.width * small.height  # the background is not nearly everything


@pytest.mark.browser
def test_chromium_check_catches_a_plot_that_does_not_render(reported: tuple[str, Path], chromium: str,
                                                           tmp_path: Path) -> None:
    html = (reported[1] / "index.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1))
    console, _ = _open_in_chromium(chromium, broken, tmp_path)
    assert any("plot failed to render" in line for line in console)
