"""Time to accuracy: cnnsearch's defaults against a hand-written Optuna script and Ray Tune, on the same data.

Sides (each one search, in a fresh process):

- ``cnnsearch``: ``cnnsearch run --dataset D --timeout B --seed S`` with every other option at its
  default (no ``--space``: whatever space ``cnnsearch run`` picks by itself);
- ``cnnsearch --no-start``: the same without the space's start points;
- ``optuna-script``: ``benchmarks/sides/optuna_script.py``, TPE + MedianPruner + a DataLoader loop
  over a small CNN, as a user writes it from Optuna's tutorial;
- ``ray-tune``: ``benchmarks/sides/ray_tune.py``, ``Tuner`` + ``OptunaSearch`` + ``ASHAScheduler``
  over the same model family and loop, on a local Ray cluster (loopback only);
- ``reference`` (not a search; ``--no-reference`` leaves it out): ``benchmarks/sides/reference.py``,
  each of a few hand-picked networks trained, in a process of its own, for the whole 180 s (or the
  budget if shorter); its figure is the best of their final val accuracies, which the searches'
  best val at 180 s is compared with, and that network's test accuracy.

What is alike for every side: the data and its train/val/test split (cnnsearch's own, split seed
0); torch's threads (the harness pins each process to ``--threads`` cores and sets
``OMP_NUM_THREADS`` to match; cnnsearch takes as many threads as it has cores, the scripts take
torch's default, which follows ``OMP_NUM_THREADS``, and Ray gets that many CPUs, all for one
trial); the wall-clock budget, counted by the harness from just before it starts the process, so
imports, data loading and a cluster's start count; at the budget the harness stops the process
(SIGINT, then SIGKILL of its process group). Each side's events are its finished trials (seconds
since that start, val accuracy); anything after the budget is dropped. The order of the sides
rotates from seed to seed, so that none always runs first.

Figures per dataset, medians over seeds with their spread (min–max): the best val accuracy at
15/30/60/120/300 s (the columns within the budget); time to parity, how long each side takes to
reach the script's final best val (the median over seeds of its best at the budget); and the
test accuracy of each side's pick (its best val trial within the budget, retrained with its own
seed on train + val, as cnnsearch's final evaluation does, and measured on the test split no
search saw).

Datasets: ``mnist5k``; ``digits`` (8x8, as is); ``mnist5k-1k``, mnist5k's split with the train
part cut to 1,000 images (stratified; the same val and test), written as an image folder with
``train/``, ``val/`` and ``test/`` so that ``cnnsearch run`` reads exactly that split.

    python benchmarks/time_to_accuracy.py                     # 3 datasets x 5 seeds x (4 x 300 + 3 x 180 s) (~9 h)
    python benchmarks/time_to_accuracy.py --datasets mnist5k --seeds 2 --budget 120 --save tta.json
    python benchmarks/time_to_accuracy.py --merge a.json b.json  # tables of runs split over commands
    python benchmarks/time_to_accuracy.py --datasets digits --first-seed 3 --seeds 2 --save b.json  # seeds 3, 4
    python benchmarks/time_to_accuracy.py --quick             # digits, 1 seed, 15 s (about 90 s)

Stopped early (Ctrl-C, ``kill``, a closed terminal), it kills the running side's process group and
removes its temporary folder; ``--save``'s file keeps every run finished, for ``--first-seed``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)  # benchmarks/spaces/ would shadow the `spaces` package

import torch  # noqa: E402

from benchmarks.common import machine_line, parser_with_modes, read_saved, result_line, save_json, table  # noqa: E402
from benchmarks.sides import handwritten  # noqa: E402

SIDES = ("cnnsearch", "cnnsearch --no-start", "optuna-script", "ray-tune")
BASELINE = "optuna-script"
"""The side whose final best val sets the parity target."""
REFERENCE = "reference"
"""Not a search: the best of a few hand-picked networks, each trained for the whole reference time."""
REFERENCE_SECONDS = 180.0
"""The time the goal compares at: the search's best val after it, and what one network trains in it."""
WITHIN = 0.02
"""How close to the reference the search's best val at REFERENCE_SECONDS should be (issue 18)."""
DATASETS = ("mnist5k", "digits", "mnist5k-1k")
ANYTIME = (15.0, 30.0, 60.0, 120.0, 300.0)
STOP_GRACE = 15.0
"""Seconds a side may take to end after SIGINT at its budget before its process group is killed."""
SMALL_TRAIN = 1000


@dataclass
class DataSource:
    """A benchmark dataset as every side names it: a ``--dataset`` value and the image size to ask for."""

    name: str
    dataset: str
    image_size: int | None = None


@dataclass
class Run:
    """One side's search on one dataset with one seed: its finished trials and the test accuracy of its pick."""

    side: str
    dataset: str
    seed: int
    order: int
    events: list[dict[str, Any]] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    test_accuracy: float | None = None
    wall: float = 0.0
    batch: int = 0
    """Which ``--merge`` file the run came from: seed 0 of two files are two seeds."""


def small_train_folder(folder: Path) -> DataSource:
    """mnist5k's split, its train part cut to :data:`SMALL_TRAIN` images (stratified), as an image folder."""
    import numpy as np
    from PIL import Image
    from sklearn.model_selection import train_test_split

    from search.trial.data import make_split
    from search.trial.datasets import load_dataset

    images = load_dataset("mnist5k")
    split = make_split(images.labels, seed=0)
    labels = images.labels.numpy()
    train = np.asarray(split.train)
    train, _ = train_test_split(train, train_size=SMALL_TRAIN, random_state=0, stratify=labels[train])
    for part, index in (("train", np.sort(train)), ("val", split.val), ("test", split.test)):
        for i in np.asarray(index):
            out = folder / part / images.classes[labels[i]]
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[i, 0].numpy(), mode="L").save(out / f"{i}.png")
    return DataSource("mnist5k-1k", f"imagefolder:{folder}", image_size=28)


def data_source(name: str, folder: Path) -> DataSource:
    """The benchmark dataset ``name`` as the sides read it; ``mnist5k-1k`` is written under ``folder`` first."""
    return small_train_folder(folder) if name == "mnist5k-1k" else DataSource(name, name)


def command(side: str, source: DataSource, seed: int, budget: float, t0: float, workdir: Path,
            root: Path = ROOT) -> list[str]:
    """The command line of ``side``'s process, with the code of the checkout at ``root``."""
    size = ["--image-size", str(source.image_size)] if source.image_size else []
    if side.startswith(REFERENCE):  # reference:NETWORK
        return [sys.executable, str(root / "benchmarks" / "sides" / "reference.py"), "--network",
                side.split(":", 1)[1], "--dataset", source.dataset, *size, "--seed", str(seed), "--budget",
                f"{budget:g}", "--t0", repr(t0), "--events", str(_events_file(REFERENCE, source, seed, workdir))]
    if side.startswith("cnnsearch"):
        db = _db_file(side, source, seed, workdir)
        return [sys.executable, "-m", "search.cli", "run", "--study", "tta", "--dataset", source.dataset, *size,
                "--timeout", f"{budget:g}", "--seed", str(seed), "--storage", f"sqlite:///{db}", "--no-progress",
                *(["--no-start"] if side.endswith("--no-start") else [])]
    script = root / "benchmarks" / "sides" / ("optuna_script.py" if side == BASELINE else "ray_tune.py")
    return [sys.executable, str(script), "--dataset", source.dataset, *size, "--seed", str(seed),
            "--budget", f"{budget:g}", "--t0", repr(t0), "--events", str(_events_file(side, source, seed, workdir))]


def run_side(side: str, source: DataSource, seed: int, order: int, budget: float, threads: int,
             workdir: Path, root: Path = ROOT) -> Run:
    """Start ``side`` in a fresh process on ``threads`` cores, stop it at ``budget`` seconds, read its events.

    ``root``: the checkout whose code the process runs (another commit's worktree for
    ``benchmarks/search_ab.py``); its imports come from there, ahead of the installed package.
    """
    log = open(_log_file(side, source, seed, workdir), "w", encoding="utf-8")  # noqa: SIM115
    proc, t0 = launch_side(side, source, seed, budget, threads, workdir, log, root)
    try:
        proc.wait(timeout=max(0.0, t0 + budget - time.time()))
    except subprocess.TimeoutExpired:
        interrupt_side(proc)
    finally:
        kill_side(proc)
        log.close()
    run = Run(side, source.name, seed, order, wall=time.time() - t0)
    if side.startswith("cnnsearch"):
        run.events, run.threads = _cnnsearch_events(_db_file(side, source, seed, workdir), t0)
    else:
        path = _events_file(side.split(":")[0], source, seed, workdir)
        run.events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        run.threads = sorted({e.pop("threads") for e in run.events})
    run.events = [e for e in run.events if e["t"] <= budget]
    return run


def launch_side(side: str, source: DataSource, seed: int, budget: float, threads: int, workdir: Path, log: Any,
                root: Path = ROOT) -> tuple[subprocess.Popen, float]:
    """``side``'s process, started on ``threads`` cores with its output to ``log``, and the time it started."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray: loopback only
    t0 = time.time()  # the budget counts from here: process start, imports and data loading included
    proc = subprocess.Popen(command(side, source, seed, budget, t0, workdir, root), cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: _start_side(cores))
    return proc, t0


def interrupt_side(proc: subprocess.Popen) -> None:
    """Stop a side as its user's Ctrl-C would (SIGINT), and give it :data:`STOP_GRACE` seconds to end."""
    _signal_group(proc, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass


def kill_side(proc: subprocess.Popen) -> None:
    """Kill whatever of the side's process group is left (Ray's workers, a stuck child) and reap it."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _start_side(cores: list[int]) -> None:
    """In the side's process before it starts: pinned to ``cores``, and SIGINT as a side started by hand gets it.

    A harness started in the background (``nohup ... &``) ignores SIGINT, and an ignored signal
    stays ignored across ``exec``: every side would then be killed at the budget instead of
    stopping as its user's Ctrl-C stops it.
    """
    os.sched_setaffinity(0, cores)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_reference(source: DataSource, seed: int, order: int, seconds: float, threads: int, workdir: Path) -> Run:
    """Each hand-picked network in a process of its own with ``seconds`` from its start; one Run of them all."""
    from benchmarks.sides.reference import NETWORKS

    run = Run(REFERENCE, source.name, seed, order)
    for network in NETWORKS:
        one = run_side(f"{REFERENCE}:{network}", source, seed, order, seconds, threads, workdir)
        run.wall += one.wall
    # Every network appended to one events file; the last read holds them all.
    run.events, run.threads = one.events, one.threads
    for network in sorted(set(NETWORKS) - {e["network"] for e in run.events}):
        # Said, not only left out of the table: a network that failed would otherwise look merely slow.
        lines = _log_file(f"{REFERENCE}:{network}", source, seed, workdir).read_text().splitlines()
        print(f"{source.name} seed {seed} reference {network}: no result within {seconds:g} s"
              f"{'; its last line: ' + lines[-1] if lines else ''}", flush=True)
    for event in run.events:
        if "cut" in event:  # stopped before its planned epochs: its figure is from a schedule not run out
            print(f"{source.name} seed {seed} reference {event['network']}: {event['cut']}", flush=True)
    return run


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the process's own group: start_new_session made it its leader
    except ProcessLookupError:
        pass


def _cnnsearch_events(db: Path, t0: float) -> tuple[list[dict[str, Any]], list[int]]:
    import optuna

    from storage.records import THREADS

    if not db.exists():
        return [], []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name="tta", storage=f"sqlite:///{db}")
    except KeyError:  # stopped after it created the database, before the study: nothing finished
        return [], []
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    events = sorted(({"t": t.datetime_complete.timestamp() - t0, "value": t.value, "trial": t.number}
                     for t in done), key=lambda e: e["t"])
    return events, sorted({t.user_attrs.get(THREADS) for t in study.trials if THREADS in t.user_attrs})


def _db_file(side: str, source: DataSource, seed: int, workdir: Path) -> Path:
    return workdir / f"{_slug(side)}-{source.name}-{seed}.db"


def _events_file(side: str, source: DataSource, seed: int, workdir: Path) -> Path:
    return workdir / f"{_slug(side)}-{source.name}-{seed}.jsonl"


def _log_file(side: str, source: DataSource, seed: int, workdir: Path) -> Path:
    """Where ``side``'s process writes its output (stdout and stderr)."""
    return workdir / f"{_slug(side)}-{source.name}-{seed}.log"


def _slug(side: str) -> str:
    return side.replace(" --", "-").replace(" ", "-")


def pick(run: Run) -> dict[str, Any] | None:
    """The trial the side would hand its user: the best val within the budget (the earliest of equals)."""
    return max(run.events, key=lambda e: (e["value"], -e["t"]), default=None)


def test_accuracy(run: Run, source: DataSource, workdir: Path, cache: dict[str, Any]) -> float | None:
    """The pick retrained with its seed on train + val and measured on the test split."""
    chosen = pick(run)
    if chosen is None:
        return None
    if "config" in chosen:  # the reference's network
        return _retrained(chosen["config"], source)
    if "trial" not in chosen:
        if source.name not in cache:
            cache[source.name] = handwritten.load(source.dataset, source.image_size)
        return handwritten.test_accuracy(cache[source.name], chosen["params"], chosen["seed"])
    import optuna

    from search.study.dataset import load_study_data
    from search.study.spec import load_spec
    from search.trial.data import prepare_data
    from search.trial.train import train
    from spaces.schema import TrialConfig
    from storage.records import CONFIG

    study = optuna.load_study(study_name="tta", storage=f"sqlite:///{_db_file(run.side, source, run.seed, workdir)}")
    config = TrialConfig.from_dict(study.trials[chosen["trial"]].user_attrs[CONFIG])
    images, split = load_study_data(load_spec(study))
    final = prepare_data(images, split, "cpu", stage="final")  # trains on train + val; its "val" is test
    return train(config, final, "cpu", measure=False).val_accuracy


def _retrained(config: dict[str, Any], source: DataSource) -> float:
    """A config trained by cnnsearch's trainer on train + val of the split every side uses, measured on test."""
    from benchmarks.sides.handwritten import SPLIT_SEED
    from search.trial.data import make_split, prepare_data
    from search.trial.datasets import load_dataset
    from search.trial.train import train
    from spaces.schema import TrialConfig

    images = load_dataset(source.dataset, image_size=source.image_size)
    final = prepare_data(images, make_split(images.labels, seed=SPLIT_SEED, parts=images.parts), "cpu", stage="final")
    return train(TrialConfig.from_dict(config), final, "cpu", measure=False).val_accuracy


def progress_line(run: Run) -> str:
    """One run as it finishes: its place in the seed's order, trials, best val (and when), the pick's test."""
    best = pick(run)
    found = "-" if best is None else f"{best['value']:.4f} at {best['t']:.0f} s"
    test = "-" if run.test_accuracy is None else f"{run.test_accuracy:.4f}"
    return (f"{run.dataset} seed {run.seed} #{run.order + 1} {run.side:<21} {len(run.events):>3} finished trials, "
            f"best val {found}, pick's test {test}, torch threads {run.threads}, {run.wall:.0f} s")


def best_at(run: Run, seconds: float) -> float | None:
    return max((e["value"] for e in run.events if e["t"] <= seconds), default=None)


def seconds_to(run: Run, target: float) -> float | None:
    """When ``run`` first reached ``target``; values compared to 6 places, since a float32 mean over the
    val images (how the scripts once computed accuracy: 492/500 as 0.984000027) must not out-score
    the same share computed exactly."""
    return next((e["t"] for e in sorted(run.events, key=lambda e: e["t"]) if round(e["value"], 6) >= round(target, 6)),
                None)


def spread(values: list[float | None], digits: int = 3, missing: str = "-", none_is: float = -math.inf) -> str:
    """``median (min–max)`` of ``values``; a missing value (``none_is``: -inf for no trial yet, +inf for a
    target never reached) counts as the worst and prints as ``missing``."""
    if all(v is None for v in values):
        return missing
    numbers = [none_is if v is None else v for v in values]

    def show(v: float) -> str:
        return missing if math.isinf(v) else f"{v:.{digits}f}"

    text = show(statistics.median(numbers))
    return text + (f" ({show(min(numbers))}–{show(max(numbers))})" if len(numbers) > 1 else "")


def report(runs: list[Run], datasets: list[str], budget: float) -> str:
    """Print each dataset's tables; return the headline for the RESULT line."""
    columns = [t for t in ANYTIME if t < budget] + [budget]
    headline = []
    for name in datasets:
        runs_here = complete_seeds([r for r in runs if r.dataset == name], name)
        mine = {side: [r for r in runs_here if r.side == side] for side in SIDES}
        seeds = len(mine[SIDES[0]])
        script_final = [best_at(r, budget) for r in mine[BASELINE]]
        target = statistics.median([v for v in script_final if v is not None]) if any(script_final) else None
        print(f"\n{name}: best val accuracy at each time (median over {seeds} seeds (min–max); '-': no finished "
              f"trial yet)")
        print(table(["side", *[f"{t:g} s" for t in columns], "finished trials"],
                    [[side, *[spread([best_at(r, t) for r in rs]) for t in columns],
                      spread([float(len(r.events)) for r in rs], 0)] for side, rs in mine.items()]))
        parity = "-" if target is None else f"{target:.3f}"
        print(f"\n{name}: seconds to reach the script's final best val ({parity}), and the pick's test accuracy "
              f"(retrained with its seed on train + val)")
        rows = []
        for side, rs in mine.items():
            reached = [None if target is None else seconds_to(r, target) for r in rs]
            rows.append([side, spread(reached, 0, missing=f">{budget:g}", none_is=math.inf),
                         f"{sum(v is not None for v in reached)}/{len(rs)}",
                         spread([(pick(r) or {}).get("value") for r in rs]), spread([r.test_accuracy for r in rs]),
                         ", ".join(str(t) for t in sorted({t for r in rs for t in r.threads})) or "-"])
        print(table(["side", "seconds to parity", "reached", "pick's val", "pick's test", "torch threads"], rows))
        tests = {side: [r.test_accuracy for r in rs] for side, rs in mine.items()}
        line = f"{name} test acc of the pick " + ", ".join(
            f"{side} {spread(v).split(' ')[0]}" for side, v in tests.items())
        references = [r for r in runs_here if r.side == REFERENCE]
        if references:
            line += "; " + reference_table(name, mine, references, min(REFERENCE_SECONDS, budget))
        headline.append(line)
    return "; ".join(headline)


def complete_seeds(runs: list[Run], name: str) -> list[Run]:
    """The runs of the seeds every side ran (the reference too, in a file where it ran at all), so that each
    table's medians compare the same seeds; the seeds left out (a run cut off part-way) are said."""
    with_reference = {r.batch for r in runs if r.side == REFERENCE}  # a --no-reference file asks no reference
    ran: dict[tuple[int, int], set[str]] = {}
    for r in runs:
        ran.setdefault((r.batch, r.seed), set()).add(r.side)
    partial = {(batch, seed): sorted(present) for (batch, seed), present in ran.items()
               if not {*SIDES, *([REFERENCE] if batch in with_reference else [])} <= present}
    for (batch, seed), present in sorted(partial.items()):
        where = f" of file {batch + 1}" if any(b for b, _ in ran) else ""
        print(f"\n{name}: seed {seed}{where} left out of the tables: only {', '.join(present)} ran it (cut off?)")
    return [r for r in runs if (r.batch, r.seed) not in partial]


def reference_table(name: str, mine: dict[str, list[Run]], references: list[Run], seconds: float) -> str:
    """Print the searches' best val at ``seconds`` next to the reference's; return the goal's verdict."""

    def median_at(rs: list[Run]) -> float:  # a run with nothing finished by then counts as the worst
        return statistics.median(-math.inf if v is None else v for v in (best_at(r, seconds) for r in rs))

    reference = median_at(references)
    print(f"\n{name}: best val at {seconds:g} s against the reference, the best of {', '.join(_networks())} "
          f"each trained for {seconds:g} s (goal: cnnsearch within {WITHIN:g} of it)")
    rows = []
    for side, rs in mine.items():
        gap = median_at(rs) - reference
        rows.append([side, spread([best_at(r, seconds) for r in rs]), "-" if math.isinf(gap) else f"{gap:+.3f}", ""])
    picked = ", ".join(sorted({(pick(r) or {}).get("network", "none") for r in references}))
    rows.append([REFERENCE, spread([best_at(r, seconds) for r in references]), "",
                 f"{spread([r.test_accuracy for r in references])} (picked: {picked})"])
    print(table(["side", f"best val at {seconds:g} s", "minus the reference", "pick's test"], rows))
    mine_at = median_at(mine[SIDES[0]])
    if math.isinf(mine_at) or math.isinf(reference):
        return f"{name} reference at {seconds:g} s: no figure on one side"
    verdict = "met" if mine_at >= reference - WITHIN else f"NOT met by {reference - WITHIN - mine_at:.3f}"
    return (f"{name} cnnsearch at {seconds:g} s {mine_at:.3f} vs reference {reference:.3f} "
            f"(within {WITHIN:g}: {verdict})")


def _networks() -> list[str]:
    from benchmarks.sides.reference import NETWORKS

    return list(NETWORKS)


def main(argv: list[str] | None = None) -> int:
    parser, mode = parser_with_modes(__doc__, quick="digits, 1 seed, 15 s per side (about 90 s)",
                                     smoke="digits, 1 seed, 10 s per side (for tests)")
    mode.add_argument("--merge", nargs="+", metavar="FILE",
                      help="print the tables of runs saved with --save (e.g. one command per dataset)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per dataset (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, metavar="N",
                        help="run seeds N .. N+seeds-1 (default 0): the rest of a run cut off, for --merge")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per side and seed (default 300)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="cores (and torch threads) every side gets (default: all of this process's)")
    parser.add_argument("--no-reference", action="store_true",
                        help="leave out the hand-picked reference networks (benchmarks/sides/reference.py)")
    parser.add_argument("--save", metavar="FILE", help="also write every run's events to FILE (JSON)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(parser, args.merge)
    if args.quick or args.smoke:
        args.datasets, args.seeds, args.budget = "digits", 1, 15.0 if args.quick else 10.0
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        parser.error(f"--datasets: unknown {unknown or args.datasets!r}; choose from {', '.join(DATASETS)}")
    if (args.seeds < 1 or args.first_seed < 0 or args.budget <= 0
            or not 1 <= args.threads <= len(os.sched_getaffinity(0))):
        parser.error(f"--seeds {args.seeds}, --first-seed {args.first_seed}, --budget {args.budget:g}, --threads "
                     f"{args.threads}: need seeds >= 1, first seed >= 0, budget > 0 and 1 <= threads <= "
                     f"{len(os.sched_getaffinity(0))}")

    for stop in (signal.SIGTERM, signal.SIGHUP):  # a plain `kill`, a closed terminal: as Ctrl-C does
        signal.signal(stop, _exit_on_signal)
    runs: list[Run] = []
    started, load_before, machine = time.time(), os.getloadavg()[0], machine_line()
    with tempfile.TemporaryDirectory(prefix="cnnsearch-tta-") as tmp:
        workdir = Path(tmp)
        os.environ["CNNSEARCH_CACHE_DIR"] = str(workdir / "cache")  # the harness's and every side's
        torch.set_num_threads(args.threads)  # the retraining of the picks
        sources = {name: data_source(name, workdir / name) for name in datasets}
        test_data: dict[str, Any] = {}
        for name in datasets:
            # Decoded before any side starts, so no side pays for the image folder's first decoding.
            test_data[name] = handwritten.load(sources[name].dataset, sources[name].image_size)
            sides = SIDES if args.no_reference else (*SIDES, REFERENCE)
            for seed, order in seed_orders(sides, args.first_seed, args.seeds):
                for position, side in enumerate(order):
                    if side == REFERENCE:
                        run = run_reference(sources[name], seed, position, min(REFERENCE_SECONDS, args.budget),
                                            args.threads, workdir)
                    else:
                        run = run_side(side, sources[name], seed, position, args.budget, args.threads, workdir)
                    run.test_accuracy = test_accuracy(run, sources[name], workdir, test_data)
                    runs.append(run)
                    print(progress_line(run), flush=True)
                    if args.save:  # after every run: a run cut off after hours keeps what it measured
                        save(Path(args.save), args.budget, args.threads, datasets, runs,
                             f"{machine}; 1-min load average {load_before:.2f} at the start, "
                             f"{os.getloadavg()[0]:.2f} at the last run's end")
    print(f"\n{args.seeds} seed(s) x {args.budget:g} s per side, {args.threads} core(s) and torch threads per side, "
          f"sides in rotating order; {time.time() - started:.0f} s in all")
    print(machine + f"; 1-min load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print("\n" + result_line("time_to_accuracy", report(runs, datasets, args.budget)))
    return 0


def _exit_on_signal(signum: int, frame: Any) -> None:
    """Leave through the ``finally`` blocks: the running side's process group is killed and the
    temporary folder removed. Python's default for SIGTERM ends the harness at once, leaving the
    side (a process group of its own) training on and its folder behind. Runs already saved stay."""
    print(f"\nstopped by {signal.Signals(signum).name}; what --save wrote holds every run finished", flush=True)
    raise SystemExit(128 + signum)


def seed_orders(sides: tuple[str, ...], first: int, count: int) -> list[tuple[int, list[str]]]:
    """Seeds ``first`` .. ``first + count - 1``, each with the order its sides run in.

    The order rotates by the seed's number, not its place in this command, so a run split over
    commands (``--first-seed``) runs every seed in the order one command would have.
    """
    return [(seed, list(sides[seed % len(sides):] + sides[:seed % len(sides)])) for seed in range(first, first + count)]


def save(path: Path, budget: float, threads: int, datasets: list[str], runs: list[Run], machine: str) -> None:
    """Write ``runs`` for ``--merge``, never half-written, with the machine, date and load they ran at."""
    save_json(path, {"budget": budget, "threads": threads, "datasets": datasets, "machine": machine,
                     "runs": [r.__dict__ for r in runs]})


def merge(parser: argparse.ArgumentParser, files: list[str]) -> int:
    """Print the tables of the runs saved in ``files``, which must share one budget."""
    try:
        saved = [read_saved(f, "--merge", "time_to_accuracy.py", {"budget", "datasets", "runs"}, dict) for f in files]
    except ValueError as exc:
        parser.error(str(exc))
    budgets = {s["budget"] for s in saved}
    if len(budgets) != 1:
        parser.error(f"--merge: the files were run with different budgets ({', '.join(map(str, budgets))} s); "
                     "their tables would not compare")
    runs = [Run(**{**r, "batch": batch}) for batch, s in enumerate(saved) for r in s["runs"]]
    datasets = list(dict.fromkeys(d for s in saved for d in s["datasets"]))
    print(f"merged from {', '.join(files)}: {budgets.pop():g} s per side")
    for name, s in zip(files, saved, strict=True):  # a run split over sessions may span machines: each file says
        seeds = sorted({(r["dataset"], r["seed"]) for r in s["runs"]})
        print(f"  {name}: {', '.join(f'{d} seed {n}' for d, n in seeds) or 'no runs'}; "
              f"{s.get('machine', 'machine not recorded')}")
    print("\n" + result_line("time_to_accuracy", report(runs, datasets, saved[0]["budget"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
