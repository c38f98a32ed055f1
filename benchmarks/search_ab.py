"""One cnnsearch side of the time-to-accuracy harness on two versions of the code, seed by seed.

A change to what the search does (its sampler, its pruner, its derived space) shows in what
the search finds, and on a noisy machine only side by side. This runs one cnnsearch side of
``benchmarks/time_to_accuracy.py`` (``cnnsearch`` or ``cnnsearch --no-start``) from a temporary
git worktree of ``--base`` and from this checkout, on one of that harness's datasets, each run a
fresh process with the same seed, cores and wall-clock budget counted from its start (the
harness's ``run_side``), the version that runs first alternating from seed to seed. It prints
each version's best val accuracy at 15/30/60/120/300 s (those within the budget) and at the
budget, seed by seed how this checkout did against the base at each of those times, and the
test accuracy of each version's pick, retrained by this checkout's trainer on train + val (the
harness's ``test_accuracy``), so that both picks are measured alike.

    python benchmarks/search_ab.py --base 8ce32b2 --dataset mnist5k-1k --seeds 3 --budget 600
    python benchmarks/search_ab.py --quick      # digits, 1 seed, 30 s per version (about 2 min)
    python benchmarks/search_ab.py --tables ab.json   # the tables of a run saved with --save (cut off or not)
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)  # benchmarks/spaces/ would shadow the `spaces` package

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    machine_line,
    parser_with_modes,
    read_saved,
    result_line,
    save_json,
    short_rev,
    table,
    worktree,
)
from benchmarks.sides import handwritten  # noqa: E402
from benchmarks.time_to_accuracy import (  # noqa: E402
    ANYTIME,
    DATASETS,
    SIDES,
    Run,
    best_at,
    data_source,
    progress_line,
    run_side,
    spread,
    test_accuracy,
)

SEARCH_SIDES = tuple(side for side in SIDES if side.startswith("cnnsearch"))
HERE = "working tree"
"""The label of this checkout's runs; the base's are labelled with its short hash."""
SAVED_KEYS = {"base", "side", "dataset", "budget", "threads", "runs"}
"""What ``--save`` writes: the settings and each version's runs."""


def compare(runs: dict[str, list[Run]], budget: float) -> str:
    """Print both versions' tables and the seed-by-seed comparison; return the RESULT line's summary.

    Only the seeds both versions ran count (a run cut off part-way leaves one version a seed ahead).
    """
    base, here = runs
    both = {r.seed for r in runs[base]} & {r.seed for r in runs[here]}
    for label, rs in runs.items():
        for seed in sorted({r.seed for r in rs} - both):
            print(f"\nseed {seed} left out of the tables: only {label} ran it (cut off?)")
    runs = {label: sorted((r for r in rs if r.seed in both), key=lambda r: r.seed) for label, rs in runs.items()}
    columns = [t for t in ANYTIME if t < budget] + [budget]
    print(f"\nbest val accuracy at each time (median over {len(runs[here])} seeds (min–max); '-': no finished "
          f"trial yet), and the pick's test accuracy (retrained with its seed on train + val)")
    print(table(["version", *[f"{t:g} s" for t in columns], "finished trials", "pick's test"],
                [[label, *[spread([best_at(r, t) for r in rs]) for t in columns],
                  spread([float(len(r.events)) for r in rs], 0), spread([r.test_accuracy for r in rs])]
                 for label, rs in runs.items()]))
    pairs = list(zip(runs[base], runs[here], strict=True))
    figures = [(f"best val at {t:g} s", [(best_at(b, t), best_at(h, t)) for b, h in pairs]) for t in columns]
    figures.append(("pick's test", [(b.test_accuracy, h.test_accuracy) for b, h in pairs]))
    print(f"\n{here} against {base}, seed by seed ('-' on a side: nothing finished by then, counted as behind)")
    rows = []
    for name, values in figures:
        verdicts = [_verdict(b, h) for b, h in values]
        gaps = [h - b for b, h in values if b is not None and h is not None]
        rows.append([name, " ".join(_pair(b, h) for b, h in values),
                     f"{statistics.median(gaps):+.3f}" if gaps else "-",
                     f"{verdicts.count('ahead')}/{verdicts.count('level')}/{verdicts.count('behind')}"])
    print(table(["figure", f"per seed ({base} → {here})", "median difference", "ahead/level/behind"], rows))
    at_budget = [(best_at(b, budget), best_at(h, budget)) for b, h in pairs]
    verdicts = [_verdict(b, h) for b, h in at_budget]
    tests = {label: spread([r.test_accuracy for r in rs]).split(" ")[0] for label, rs in runs.items()}
    return (f"best val at {budget:g} s {base} {spread([b for b, _ in at_budget]).split(' ')[0]}, "
            f"{here} {spread([h for _, h in at_budget]).split(' ')[0]} ({here} ahead in {verdicts.count('ahead')}, "
            f"level in {verdicts.count('level')}, behind in {verdicts.count('behind')} of {len(pairs)} seeds); "
            f"pick's test {base} {tests[base]}, {here} {tests[here]}")


def _verdict(base: float | None, here: float | None) -> str:
    b, h = (-math.inf if v is None else round(v, 6) for v in (base, here))
    return "ahead" if h > b else "behind" if h < b else "level"


def _pair(base: float | None, here: float | None) -> str:
    def show(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return f"{show(base)}→{show(here)}"


def save(path: Path, meta: dict, runs: dict[str, list[Run]]) -> None:
    """Every run so far, per version, to ``path``, never half-written."""
    save_json(path, {**meta, "runs": {label: [r.__dict__ for r in rs] for label, rs in runs.items()}})


def read_runs(saved: dict) -> dict[str, list[Run]]:
    """The runs of a file ``--save`` wrote, per version; KeyError unless it holds both versions'."""
    runs = {label: [Run(**r) for r in rs] for label, rs in saved["runs"].items()}
    if sorted(runs) != sorted([saved["base"], HERE]):
        raise KeyError("both versions' runs")
    return runs


def tables(saved: dict, runs: dict[str, list[Run]], path: Path) -> int:
    """Print the tables of the runs saved in ``path`` by ``--save``."""
    print(f"{saved['side']} on {saved['dataset']}, from {path}: {saved['base']} and the {HERE}, "
          f"{saved['budget']:g} s each, {saved['threads']} core(s) and torch threads")
    summary = compare(runs, saved["budget"])
    seeds = len({r.seed for r in runs[saved["base"]]} & {r.seed for r in runs[HERE]})
    print("\n" + result_line("search_ab", f"{saved['side']} on {saved['dataset']}, {seeds} seed(s) x "
                                          f"{saved['budget']:g} s: " + summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, mode = parser_with_modes(__doc__, quick="digits, 1 seed, 30 s per version (about 2 min)",
                                  smoke="digits, 1 seed, 15 s per version (for tests)")
    parser.add_argument("--base", default="HEAD~1", help="the commit to compare this checkout with (default HEAD~1)")
    parser.add_argument("--side", default="cnnsearch --no-start", choices=SEARCH_SIDES,
                        help="which cnnsearch side (default: cnnsearch --no-start, the search without start points)")
    parser.add_argument("--dataset", default="mnist5k-1k", choices=DATASETS, help="default mnist5k-1k")
    parser.add_argument("--seeds", type=int, default=5, help="seeds (default 5)")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per version and seed (default 600)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="cores (and torch threads) each run gets (default: all of this process's)")
    parser.add_argument("--save", metavar="FILE", help="also write every run's finished trials to FILE (JSON)")
    mode.add_argument("--tables", metavar="FILE", type=Path, help="print the tables of a run saved with --save")
    args = parser.parse_args(argv)
    if args.tables:
        try:
            saved, runs = read_saved(args.tables, "--tables", "search_ab.py", SAVED_KEYS,
                                     lambda saved: (saved, read_runs(saved)))
        except ValueError as exc:
            parser.error(str(exc))
        return tables(saved, runs, args.tables)
    if args.quick or args.smoke:
        args.dataset, args.seeds, args.budget = "digits", 1, 30.0 if args.quick else 15.0
    if args.seeds < 1 or args.budget <= 0 or not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--seeds {args.seeds}, --budget {args.budget:g}, --threads {args.threads}: need seeds >= 1, "
                     f"budget > 0 and 1 <= threads <= {len(os.sched_getaffinity(0))}")
    rev = short_rev(ROOT, args.base)
    runs: dict[str, list[Run]] = {rev: [], HERE: []}
    meta = {"base": rev, "side": args.side, "dataset": args.dataset, "budget": args.budget, "threads": args.threads}
    started, load_before = time.time(), os.getloadavg()[0]
    with worktree(ROOT, rev) as base, tempfile.TemporaryDirectory(prefix="cnnsearch-search-ab-") as tmp:
        workdir = Path(tmp)
        for tree in (base, ROOT):  # a fresh worktree would compile every module in its first run's budget
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-x", r"/\.", str(tree)], check=False)
        os.environ["CNNSEARCH_CACHE_DIR"] = str(workdir / "cache")  # shared: an entry of another format is rebuilt
        torch.set_num_threads(args.threads)  # the retraining of the picks
        source = data_source(args.dataset, workdir / "data")
        # Decoded before either version starts, so that neither pays for the first decoding.
        test_data = {source.name: handwritten.load(source.dataset, source.image_size)}
        trees = [(rev, base), (HERE, ROOT)]
        for seed in range(args.seeds):
            for position, (label, tree) in enumerate(trees if seed % 2 == 0 else trees[::-1]):
                where = workdir / ("base" if tree == base else "here")  # each version's study files apart
                where.mkdir(exist_ok=True)
                run = run_side(args.side, source, seed, position, args.budget, args.threads, where, tree)
                run.test_accuracy = test_accuracy(run, source, where, test_data)
                runs[label].append(run)
                print(f"{label:<12} {progress_line(run)}", flush=True)
                if args.save:  # after every run: a run cut off after hours keeps what it measured
                    save(Path(args.save), meta, runs)
    print(f"\n{args.side} on {args.dataset}: {rev} and the {HERE}, {args.seeds} seed(s) x {args.budget:g} s each, "
          f"{args.threads} core(s) and torch threads, the first version alternating; {time.time() - started:.0f} s "
          f"in all")
    print(machine_line() + f"; 1-min load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    summary = compare(runs, args.budget)
    print("\n" + result_line("search_ab", f"{args.side} on {args.dataset}, {args.seeds} seed(s) x {args.budget:g} s: "
                                          + summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
