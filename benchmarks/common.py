"""What the benchmark scripts share: the machine line, interleaved timing, medians and the table.

Every figure a benchmark prints is a ratio or a pair measured in the same run: the
machines are shared and noisy, so the variants are run interleaved (A B C A B C ...)
and each is summarised by its median over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from storage.staging import staged_files

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming the machine and the date, printed above every benchmark table."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"machine: {cores} cores (nproc), {cpu_model()}; date {datetime.date.today().isoformat()}"


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run every variant once per round; return each one's results, in round order.

    Interleaving spreads the machine's noise (other users, frequency changes) over all the
    variants alike, so their medians compare; each round starts one variant later than the
    last (A B C, B C A, C A B, ...) so that no variant always runs first.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: need at least 1")
    names = list(variants)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out[name].append(variants[name]())
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(wall seconds, CPU seconds of this process, result)`` of one call of ``fn``.

    On a shared machine the CPU time of a one-thread run is the steadier figure: time spent
    waiting for a core that another user holds counts in the wall time only.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN for none)."""
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (so it pastes into BENCHMARKS.md as printed), columns padded to align."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"
    return str(value)


def result_line(benchmark: str, summary: str) -> str:
    """The one line ``run_all.py`` collects from a benchmark's output: ``RESULT <benchmark>: <summary>``."""
    return f"RESULT {benchmark}: {summary}"


def goal_verdict(met: bool, smoke: bool) -> str:
    """``met`` or ``NOT met``; ``smoke: not judged`` for a ``--smoke`` run, whose sizes no goal is set for."""
    if smoke:
        return "smoke: not judged"
    return "met" if met else "NOT met"


def parser_with_modes(doc: str | None, quick: str, smoke: str) -> tuple[argparse.ArgumentParser, Any]:
    """A benchmark's argument parser with its two short modes, ``--quick`` (run_all's) and ``--smoke`` (tests').

    Returns the parser and the mutually exclusive group of the modes (for a script with one more).
    """
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=quick)
    mode.add_argument("--smoke", action="store_true", help=smoke)
    return parser, mode


def short_rev(root: Path, rev: str) -> str:
    """``rev`` (a commit, a branch, ``HEAD~1``) as git's short hash, in the repository at ``root``."""
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


@contextlib.contextmanager
def worktree(root: Path, rev: str) -> Iterator[Path]:
    """A temporary git worktree of ``rev`` of the repository at ``root``, removed again afterwards.

    Where an A/B benchmark runs the base version's code from (``benchmarks/ab.py``,
    ``benchmarks/search_ab.py``): a checkout of its own, so this one stays as it is.
    """
    with tempfile.TemporaryDirectory(prefix="cnnsearch-ab-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=root, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, check=False)


def save_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` as JSON, whole or not at all (:func:`storage.staging.staged_files`).

    A benchmark saves after every run: one cut off while writing keeps the file of the run before.
    """
    with staged_files(path.parent) as staging:
        staging.write_text(path.name, json.dumps(record))


def read_saved(path: str | Path, flag: str, writer: str, keys: set[str], build: Callable[[dict[str, Any]], T]) -> T:
    """``build`` of the JSON object that ``writer --save`` wrote to ``path``, which must hold ``keys``.

    Raises ValueError naming ``flag``, the file and what is wrong, for a one-line ``parser.error``.
    """
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not keys <= set(saved):
            raise KeyError(", ".join(sorted(keys)))
        return build(saved)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{flag} {path}: not a file written by {writer} --save ({type(exc).__name__}: {exc})") from exc
