"""A small finished study on real data (digits, the ``tiny`` space): how it is made and copied.

Training is the slow part of the tests that read a finished study, so it is run once per test
session (the ``tiny_study`` fixture in ``tests/conftest.py``, in-process through the CLI as a
user would) and every test gets its own copy of the database and artifact directory: a test may
add trials to its copy without changing what the others see.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from search.cli import main

STUDY = "tiny"

QUICK_LR_SPACE = """
params:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  width: 4
  depth: 1
  epochs: 2
  batch_size: 128
"""
"""A space of two-epoch, width-4 trials that differ only in their learning rate: studies of seconds."""
RUN_ARGS = ["--dataset", "digits", "--space", "tiny", "--trials", "5", "--seed", "2", "--keep-checkpoints",
            "--no-progress"]


def run_tiny_study(root: Path) -> Path:
    """Run the study :data:`STUDY` into ``root`` (``cnnsearch.db`` and ``cnnsearch-artifacts/``); return ``root``."""
    with contextlib.chdir(root), pytest.MonkeyPatch.context() as patch:
        # One thread: these 8x8 models train fastest single-threaded, and on a shared 2-core
        # machine two OpenMP threads can be 20x slower than one (measured).
        patch.setattr("search.study.local.cpu_threads_per_worker", lambda jobs: 1)
        code = main(["run", "--study", STUDY, "--storage", f"sqlite:///{root / 'cnnsearch.db'}", *RUN_ARGS])
    assert code == 0, "the shared tiny study did not run"
    return root


def copy_study(root: Path, dest: Path) -> str:
    """Copy the study in ``root`` into ``dest``; return its storage URL there."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in root.glob("cnnsearch.db*"):  # with the WAL journal: committed rows may still be in -wal
        shutil.copy2(part, dest / part.name)
    if (root / "cnnsearch-artifacts").is_dir():
        shutil.copytree(root / "cnnsearch-artifacts", dest / "cnnsearch-artifacts")
    return f"sqlite:///{dest / 'cnnsearch.db'}"
