"""A small finished study on real data (digits, the ``tiny`` space), run once per test session.

Training is the slow part of these tests, so the study is run once (in-process, through
the CLI as a user would) and every test gets its own copy of the database and artifact
directory: a test may add trials to its copy without changing what the others see.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from search.cli import main

STUDY = "tiny"
RUN_ARGS = ["--dataset", "digits", "--space", "tiny", "--trials", "5", "--seed", "2", "--keep-checkpoints",
            "--no-progress"]

_runs: dict[str, Path] = {}


def finished_study(tmp_path_factory: pytest.TempPathFactory, dest: Path) -> str:
    """Copy the session's finished study into ``dest``; return its storage URL there.

    ``dest/cnnsearch.db`` and ``dest/cnnsearch-artifacts/`` (the kept checkpoints) are a
    study named :data:`STUDY` with 5 trials of ``cnnsearch run --dataset digits --space
    tiny --keep-checkpoints``.
    """
    if "root" not in _runs:
        root = tmp_path_factory.mktemp("tiny-study")
        with contextlib.chdir(root), pytest.MonkeyPatch.context() as patch:
            # One thread: these 8x8 models train fastest single-threaded, and on a shared 2-core
            # machine two OpenMP threads can be 20x slower than one (measured).
            patch.setattr("search.run.cpu_threads_per_worker", lambda jobs: 1)
            code = main(["run", "--study", STUDY, "--storage", f"sqlite:///{root / 'cnnsearch.db'}", *RUN_ARGS])
        assert code == 0, "the shared tiny study did not run"
        _runs["root"] = root
    root = _runs["root"]
    dest.mkdir(parents=True, exist_ok=True)
    for part in root.glob("cnnsearch.db*"):  # with the WAL journal: committed rows may still be in -wal
        shutil.copy2(part, dest / part.name)
    if (root / "cnnsearch-artifacts").is_dir():
        shutil.copytree(root / "cnnsearch-artifacts", dest / "cnnsearch-artifacts")
    return f"sqlite:///{dest / 'cnnsearch.db'}"
