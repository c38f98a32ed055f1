"""Storage overhead per trial and trials/s of the worker loop: SQLite vs PostgreSQL, 1, 4 and 8 workers.

Each worker is a process running the real worker loop (``search.study.worker.worker_loop``) on a
study of N enqueued trials, exactly as ``cnnsearch worker`` does: failing stale trials,
claiming a waiting trial, the heartbeat thread, identity/config/seed/constraint user attrs,
one intermediate value (and pruner call) per epoch with its curve attr, metric user attrs,
``tell`` and the dashboard note. Only training is replaced, by a stub that reports two
epochs and returns fixed metrics at once (``search.study.objective.fit``), so what is measured is
what the storage, and Optuna around it, costs per trial.

- ``trials/s``: N / wall, the wall running from the moment all workers are ready until the
  last trial is told (a worker's idle polling after the budget is spent is not counted).
- ``trial runs``: trials run by the workers; more than N means two workers claimed the same
  waiting trial (SQLite: ``claim_waiting_trial``'s read-then-update is not atomic there).
- ``ms/trial``: workers x wall / N, the worker time one trial costs (on 2 cores, 4 and 8
  workers also wait for CPU).
- Baseline, in the same run and on the same storage: Optuna's own ``study.optimize`` loop,
  one process, with an objective that suggests the same two params, reports two epochs
  and returns at once (``optuna 1 proc``).

Every configuration runs ``--rounds`` times, interleaved (SQLite and PostgreSQL alternate),
on a fresh SQLite file / PostgreSQL database each time; the table shows medians. PostgreSQL
is a private server started for the run (tests/pg.py: initdb + pg_ctl, fsync off, as in the
tests) unless ``--postgres URL`` names one; without either, only SQLite is measured.

    python benchmarks/storage_overhead.py            # 1000 trials; 1, 4, 8 workers; 3 rounds
    python benchmarks/storage_overhead.py --quick    # 40 trials; 1, 4 workers; 1 round (about a minute)
    python benchmarks/storage_overhead.py --smoke    # seconds: 20 trials, 1 and 2 workers
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import optuna

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import machine_line, median, parser_with_modes, result_line, table  # noqa: E402
from search.study.spec import StudySpec, create_or_resume, fill_budget  # noqa: E402
from search.trial.metrics import TrialMetrics  # noqa: E402
from spaces import Space, parse_space  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402
from storage import open_storage  # noqa: E402

EPOCHS = 2
STUDY_SPACE = {
    "description": "storage benchmark: two searched params, training stubbed",
    "params": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
               "width": {"type": "int", "low": 4, "high": 16}, "epochs": EPOCHS, "depth": 1},
}


def bench_space() -> Space:
    return parse_space(STUDY_SPACE, source="storage-overhead")


# --- the worker processes --------------------------------------------------------------------------

def stub_fit(config: TrialConfig, data: Any, device: Any, report: Callable | None = None, *,
             measure: bool = True, deadline: float | None = None, scores: Any = (), checkpoints: Any = None,
             stop: Any = None) -> tuple[None, TrialMetrics]:
    """``search.trial.train.fit`` without the training: each epoch reported, fixed metrics returned."""
    curve = []
    for epoch in range(config.epochs):
        curve.append(0.5 + 0.01 * epoch)
        if report is not None:
            report(epoch, {"val_accuracy": curve[-1], "val_loss": 1.0})
    return None, TrialMetrics(
        val_accuracy=curve[-1], val_loss=1.0, best_val_accuracy=curve[-1], epochs_run=len(curve), params=1000,
        flops=100_000, train_seconds=0.0, latency_ms=0.1, throughput=10_000.0, device=str(device), amp=None,
        notes=[], curves={"val_accuracy": curve, "val_loss": [1.0] * len(curve), "train_loss": [1.0] * len(curve),
                          "lr": [config.lr] * len(curve)})


def serve(index: int, jobs: Any, results: Any) -> None:
    """A worker process: load the data once, then run each job's study with the stubbed worker loop.

    Answers ("loaded", index) once; then per job: receive (url, study), answer ("ready", index),
    wait for "go", run, answer (index, start, last_told, trials). ``None`` ends the process.
    """
    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    from search.study.worker import WorkerSettings, worker_loop
    from search.trial.data import make_split, prepare_data
    from search.trial.datasets import load_dataset

    images = load_dataset("digits")
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu")
    results.put(("loaded", index))
    while (job := jobs.get()) is not None:
        url, study = job
        told: list[float] = []
        with mock.patch("search.study.objective.fit", stub_fit):
            results.put(("ready", index))
            jobs.get()  # "go"
            start = time.monotonic()
            settings = WorkerSettings(device="cpu", worker_index=index, threads=1)
            summary = worker_loop(url, study, settings, data=data,
                                  on_trial=lambda _outcome, told=told: told.append(time.monotonic()))
        results.put((index, start, told[-1] if told else start, len(summary.outcomes)))


class Pool:
    """``size`` worker processes, started once (each imports torch once) and reused by every run."""

    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.jobs = [ctx.Queue() for _ in range(size)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=serve, args=(i, self.jobs[i], self.results), daemon=True)
                      for i in range(size)]
        for proc in self.procs:
            proc.start()
        self._collect(size)  # every process has imported torch and loaded its data: nothing else runs

    def run(self, url: str, study: str, workers: int) -> tuple[float, int]:
        """Work ``study`` with ``workers`` of the processes; return (wall seconds, trials run)."""
        for jobs in self.jobs[:workers]:
            jobs.put((url, study))
        self._collect(workers)  # each is ready: data loaded, storage module imported
        for jobs in self.jobs[:workers]:
            jobs.put("go")
        done = self._collect(workers)
        return max(d[2] for d in done) - min(d[1] for d in done), sum(d[3] for d in done)

    def _collect(self, n: int) -> list[Any]:
        """``n`` answers from the workers; a worker that died is an error, not a hang."""
        out: list[Any] = []
        while len(out) < n:
            try:
                out.append(self.results.get(timeout=1.0))
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker process {dead[0].name} died (exit code {dead[0].exitcode})") from None
        return out

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for proc in self.procs:
            proc.join(timeout=30)


# --- studies and storages ---------------------------------------------------------------------------

def make_study(url: str, trials: int) -> str:
    """A fresh study of ``trials`` enqueued trials (random sampler: the sampler's own cost stays out)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    spec = StudySpec(space=bench_space(), dataset="digits", sampler="random", pruner="none", budget=trials)
    fill_budget(create_or_resume(open_storage(url, heartbeat_interval=None), name, spec), spec)
    return name


def optuna_baseline(url: str, trials: int) -> float:
    """Wall seconds of Optuna's own optimize loop for ``trials`` trivial trials on ``url``."""

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 3e-2, log=True)
        trial.suggest_int("width", 4, 16)
        for epoch in range(EPOCHS):
            trial.report(0.5, epoch)
            trial.should_prune()
        return 0.5

    study = optuna.create_study(storage=open_storage(url), sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.monotonic()
    study.optimize(objective, n_trials=trials)
    return time.monotonic() - start


class Databases:
    """A fresh database per run: a SQLite file in a temp dir, a PostgreSQL database on the server."""

    def __init__(self, folder: str, postgres_url: str | None, cluster: Any) -> None:
        self.folder = folder
        self.postgres_url = postgres_url
        self.cluster = cluster

    def backends(self) -> list[str]:
        return ["sqlite", *(["postgresql"] if self.postgres_url or self.cluster else [])]

    def fresh(self, backend: str) -> str:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        if backend == "sqlite":
            return f"sqlite:///{self.folder}/{name}.db"
        if self.cluster is not None:
            self.cluster.create_database(name)
            return self.cluster.url_for(password=self.cluster.password, database=name)
        return self.postgres_url  # a server we may not create databases on: studies share one


@contextmanager
def private_postgres(wanted: bool) -> Iterator[Any]:
    """A throwaway PostgreSQL server (tests/pg.py), or None when not wanted or not installed."""
    if not wanted:
        yield None
        return
    from tests.support.pg import PgCluster, find_pg_bindir

    bindir = find_pg_bindir()
    if bindir is None:
        print("PostgreSQL server binaries not found (scripts/install-test-deps.sh): SQLite only", file=sys.stderr)
        yield None
        return
    cluster = PgCluster(bindir)
    try:
        yield cluster
    finally:
        cluster.destroy()


# --- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(
        __doc__, quick="40 trials; 1 and 4 workers; 1 round (about a minute)",
        smoke="seconds: 20 trials; 1 and 2 workers; 1 round (tests)")
    parser.add_argument("--trials", type=int, help="trials per study (default 1000)")
    parser.add_argument("--workers", help="comma-separated worker counts (default 1,4,8)")
    parser.add_argument("--rounds", type=int, help="runs of each configuration (default 3)")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL to measure (default: a private server)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    trials = args.trials or (20 if args.smoke else 40 if args.quick else 1000)
    counts = args.workers or ("1,2" if args.smoke else "1,4" if args.quick else "1,4,8")
    workers = sorted({int(w) for w in counts.split(",") if w.strip()})
    rounds = args.rounds or (1 if args.smoke or args.quick else 3)
    if min(trials, rounds, *workers) < 1:
        parser.error(f"--trials {trials}, --rounds {rounds}, --workers {counts}: each must be at least 1")

    walls: dict[tuple[str, str], list[float]] = {}
    runs: dict[tuple[str, str], list[int]] = {}  # trial runs: more than trials when two workers ran one
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cnnsearch-storage-bench-") as folder, \
            private_postgres(not args.no_postgres and not args.postgres) as cluster:
        dbs = Databases(folder, None if args.no_postgres else args.postgres, cluster)
        pool = Pool(max(workers))
        try:
            for backend in dbs.backends():  # first-call costs (SQL compilation caches, imports) out of the timing
                optuna_baseline(dbs.fresh(backend), 5)
            for _ in range(rounds):
                for backend in dbs.backends():
                    walls.setdefault((backend, "optuna 1 proc"), []).append(
                        optuna_baseline(dbs.fresh(backend), trials))
                    for n in workers:
                        url = dbs.fresh(backend)
                        wall, ran = pool.run(url, make_study(url, trials), n)
                        key = (backend, f"{n} worker{'s' if n > 1 else ''}")
                        walls.setdefault(key, []).append(wall)
                        runs.setdefault(key, []).append(ran)
        finally:
            pool.close()

    rows, per_trial = [], {}
    for (backend, who), samples in walls.items():
        n = 1 if who.startswith("optuna") else int(who.split()[0])
        wall = median(samples)
        per_trial[(backend, who)] = 1000 * wall * n / trials
        base = per_trial[(backend, "optuna 1 proc")]
        rows.append([backend, who, trials, max(runs.get((backend, who), [trials])), wall, trials / wall,
                     per_trial[(backend, who)], per_trial[(backend, who)] / base])
    print(machine_line())
    print(f"{trials} trials per study, {rounds} round(s), median wall; training stubbed "
          f"({time.monotonic() - started:.0f} s in all)\n")
    print(table(["storage", "workers", "trials", "trial runs", "wall s", "trials/s", "ms/trial (worker time)",
                 "x optuna loop"], rows))
    best = {backend: max(trials / median(walls[(backend, w)]) for b, w in walls if b == backend
                         and not w.startswith("optuna")) for backend in {b for b, _ in walls}}
    one = {backend: per_trial[(backend, "1 worker")] for backend in best}
    summary = "; ".join(f"{b}: {one[b]:.1f} ms/trial with 1 worker, up to {best[b]:.0f} trials/s"
                        for b in sorted(best))
    print()
    print(result_line("storage_overhead", summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
