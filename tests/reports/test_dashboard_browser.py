"""The dashboard in a real browser: headless Chromium renders a cnnsearch study's page with its trials.

Skipped when Chromium is not installed, except in CI (``CI=true``), where it fails: CI must not
pass by skipping it (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from PIL import Image

from search.cli import main
from tests.support.ci import missing
from tests.support.cli import Dashboard, clean_env

pytestmark = pytest.mark.browser

QUICK_SPACE = """
params:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  width: {type: int, low: 4, high: 8}
  epochs: 2
  depth: 1
  batch_size: 256
"""

PLOT_GRID = (0xEB, 0xF0, 0xF8)
"""The grid lines of plotly's "plotly_white" template, which the dashboard's plots use."""

# Without a virtual-time budget the screenshot is taken before the page has fetched the study.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=8000",
                  "--window-size=1280,900"]


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("headless Chromium not found (Debian: apt-get install -y chromium)")
    return found


def _page_text(dom: str) -> str:
    dom = re.sub(r"(?s)<(style|script)\b.*?</\1>", " ", dom)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def test_study_page_renders_trial_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chromium: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNSEARCH_STORAGE", raising=False)
    (tmp_path / "quick.yaml").write_text(QUICK_SPACE)
    assert main(["run", "--study", "shown", "--dataset", "digits", "--space", "quick.yaml", "--trials", "1",
                 "--pruner", "none", "--no-progress"]) == 0
    study = optuna.load_study(study_name="shown", storage=f"sqlite:///{tmp_path / 'cnnsearch.db'}")
    study_id = study._study_id
    dashboard = Dashboard(tmp_path, "--port", "0", env=clean_env())
    try:
        shot = tmp_path / "study.png"
        page = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
             "--dump-dom", f"{dashboard.url}/dashboard/studies/{study_id}"],
            capture_output=True, text=True, timeout=90)
    finally:
        dashboard.kill()
    assert page.returncode == 0, page.stderr[-2000:]
    text = _page_text(page.stdout)
    assert f"shown (id={study_id})" in text
    best = study.best_trial
    params = ", ".join(f"{k}: {v}" for k, v in best.params.items())
    assert f"Best Trial (number={best.number}) {best.value} Params = [{params}]" in text
    assert "Intermediate values" in text and "Step Objective Value" in text  # the learning-curve plot
    assert "dataset digits" in text  # the study user attrs table

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    colors = dict((color, count) for count, color in image.getcolors(maxcolors=image.width * image.height))
    assert len(colors) > 64, "the screenshot is nearly uniform: the page did not render"
    assert max(colors.values()) < 0.95 * image.width * image.height, "the screenshot is one colour: a blank page"
    # The page's frame and empty cards render before the study is fetched; the plots (drawn with
    # plotly's "plotly_white" grid colour) only once trials are there.
    assert colors.get(PLOT_GRID, 0) > 1000, "no plot was drawn: the page shows an empty study shell"
