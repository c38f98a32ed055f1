"""Where ``cnnsearch run``'s time goes before its first complete trial (issue 18's early anytime columns).

``benchmarks/time_to_accuracy.py`` counts each side's finished trials from process start; at
15 and 30 s cnnsearch often has none yet. This splits that wait in two: everything before the
first trial starts (the interpreter and imports, loading the data, rule 6's timing of the median
network and the drawn ones, creating the study), and the first trial's own training, against
what the timed typical pace predicts for its epochs (rule 9: the range's low end). Each run is the harness's
``cnnsearch --no-start`` side (the same command, cores and threads), stopped as soon as its first
trial completes (what the harness counts; trials pruned or failed before it are counted apart).

    python benchmarks/first_trial.py                # digits, mnist5k, mnist5k-1k x 3 seeds, --timeout 300 (~3 min)
    python benchmarks/first_trial.py --datasets mnist5k --seeds 5 --budget 180
    python benchmarks/first_trial.py --quick        # digits, 1 seed
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # benchmarks/spaces/ would shadow `spaces`

import optuna  # noqa: E402

from benchmarks import time_to_accuracy as tta  # noqa: E402
from benchmarks.common import machine_line, parser_with_modes, result_line, table  # noqa: E402

SIDE = "cnnsearch --no-start"
PACE = re.compile(r"the budget \(.*?drawn from the space a median ([0-9.e+-]+) s \(")
FIRST_EPOCHS = re.compile(r"first drawn trial: (\d+) epochs")


def first_trial(source: tta.DataSource, seed: int, budget: float, threads: int, workdir: Path) -> dict:
    """Start the side, wait for its first complete trial (at most ``budget`` s), stop it; what it took."""
    db = tta._db_file(SIDE, source, seed, workdir)
    log_path = workdir / f"first-{source.name}-{seed}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        proc, t0 = tta.launch_side(SIDE, source, seed, budget, threads, workdir, log)
        first = None
        try:
            while first is None and proc.poll() is None and time.time() - t0 < budget:
                time.sleep(0.25)
                first = _first_complete(db)
            tta.interrupt_side(proc)
        finally:
            tta.kill_side(proc)
    if first is None:  # the process ended (its --timeout) between two looks, or right after a trial completed
        first = _first_complete(db)
    text = log_path.read_text(encoding="utf-8")
    pace, low = PACE.search(text), FIRST_EPOCHS.search(text)
    row = {"dataset": source.name, "seed": seed, "pace": float(pace.group(1)) if pace else None,
           "low_end": int(low.group(1)) if low else None}
    if first is not None:
        trial, trials = first
        row.update(first_start=min(t.datetime_start for t in trials if t.datetime_start).timestamp() - t0,
                   start=trial.datetime_start.timestamp() - t0, end=trial.datetime_complete.timestamp() - t0,
                   epochs=trial.params.get("epochs"), value=trial.value, number=trial.number,
                   before=sum(1 for t in trials if t.state.is_finished() and t.number != trial.number
                              and t.datetime_complete <= trial.datetime_complete))
    return row


def _first_complete(db: Path) -> tuple[optuna.trial.FrozenTrial, list[optuna.trial.FrozenTrial]] | None:
    """The study's first complete trial and all its trials so far, or None while none has completed."""
    # Looked at read-only first: Optuna's storage on a file cnnsearch is still setting up would
    # create the tables alongside it (and fail on "table already exists").
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            complete = con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # no trials table yet, or the file is locked for its creation
        return None
    if not complete:
        return None
    trials = optuna.load_study(study_name="tta", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return min(done, key=lambda t: t.datetime_complete), trials


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(__doc__, quick="digits, 1 seed", smoke="digits, 1 seed, --timeout 30 (tests)")
    parser.add_argument("--datasets", default="digits,mnist5k,mnist5k-1k", help="comma-separated (default all three)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dataset, from --first-seed (default 3)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=300.0, help="the --timeout cnnsearch is given (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="cores the side is pinned to (default 2)")
    args = parser.parse_args(argv)
    short = args.quick or args.smoke
    names = ["digits"] if short else args.datasets.split(",")
    seeds = range(args.first_seed, args.first_seed + (1 if short else args.seeds))
    budget = 30.0 if args.smoke else args.budget
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="first-trial-") as tmp:
        workdir = Path(tmp)
        for name in names:
            source = tta.data_source(name, workdir / name)
            for seed in seeds:
                rows.append(first_trial(source, seed, budget, args.threads, workdir))
                print(_line(rows[-1]), flush=True)
    print(f"cnnsearch run --no-start --timeout {budget:g}: its first complete trial; torch threads {args.threads}")
    print(machine_line())
    print(table(["dataset", "seed", "first trial starts (s)", "ended before it", "first complete: trial",
                 "starts (s)", "ends (s)", "epochs (low end)", "trains (s)", "predicted (s)", "val"],
                [[r["dataset"], r["seed"], _num(r.get("first_start")), r.get("before", "-"), r.get("number", "none"),
                  _num(r.get("start")), _num(r.get("end")), f"{r.get('epochs', '-')} ({r['low_end'] or '-'})",
                  _num(_trains(r)), _num(_predicted(r)), _num(r.get("value"), 3)] for r in rows]))
    summary = []
    for name in names:
        mine = [r for r in rows if r["dataset"] == name and "end" in r]
        predicted = [p for p in map(_predicted, mine) if p is not None]
        if mine:
            summary.append(f"{name}: first trial starts at {statistics.median(r['first_start'] for r in mine):.1f} s, "
                           f"first complete one ends at {statistics.median(r['end'] for r in mine):.0f} s "
                           f"(trains {statistics.median(_trains(r) for r in mine):.0f} s, predicted "
                           f"{f'{statistics.median(predicted):.0f}' if predicted else '-'} s)"
                           + (f", in {len(mine)} of {len(seeds)} seeds" if len(mine) < len(seeds) else ""))
        else:
            summary.append(f"{name}: no trial completed within {budget:g} s")
    print(result_line("first_trial", "; ".join(summary) + f" (medians over {len(seeds)} seed"
                                                          f"{'s' if len(seeds) > 1 else ''})"))
    return 0


def _trains(row: dict) -> float | None:
    return row["end"] - row["start"] if "end" in row else None


def _predicted(row: dict) -> float | None:
    """Its epochs at the typical pace rule 6 timed: what the derivation expected it to take (no val, no extras)."""
    return row["epochs"] * row["pace"] if row.get("epochs") and row.get("pace") else None


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _line(row: dict) -> str:
    if "end" not in row:
        return f"{row['dataset']} seed {row['seed']}: no complete trial"
    return (f"{row['dataset']} seed {row['seed']}: first trial starts at {row['first_start']:.1f} s; first complete "
            f"#{row['number']} ({row['before']} ended before it), {row['epochs']} epochs {row['start']:.1f}-"
            f"{row['end']:.1f} s, val {row['value']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
