"""Per-trial overhead of cnnsearch itself, as a share of a ~3-second trial.

Two ways to train the same configs, interleaved (A B A B ...):

- ``study``: a fresh SQLite study (``create_or_resume`` + ``fill_budget``, as ``cnnsearch run``
  does) worked by the real worker loop (``search.study.worker.worker_loop``): sampler, trial
  claim, heartbeat thread, config/identity/metric user attrs, per-epoch intermediate values
  and pruner calls, FLOP count, latency measurement, ``tell`` (throughput is timed on the
  validation pass the trial runs anyway);
- ``direct``: the configs that study ran (its trials' ``config`` user attrs, seeds
  included) trained by calling ``search.trial.train.train(config, data, "cpu", measure=False)``
  in a loop.

Both get the same on-device data (loading it is a once-per-worker cost, not per trial).
The headline is the overhead by parts, each timed in place in the worker loop's own run: the
time between one trial's training and the next (tell, claim, sampler, attrs, the dashboard
note), the per-epoch reports made during training (intermediate value, pruner), and the
latency measurement (timed alone on each config's model). The difference of the two loops,
(worker-loop wall - direct wall) / trials, is shown as a cross-check: it holds the same
parts, but on these shared machines it scatters by +-20 % of a trial from round to round.
The study's setup (storage, study, split record, enqueueing the budget) happens once per
study and is shown apart. Goal: <= 5 %.

The per-epoch resume checkpoint is measured on its own, on the default config (``TrialConfig()``:
CNN width 32, depth 2, 5 epochs, Adam) on the benchmark's data: the same config trained by
``fit`` with and without a checkpoint store in a folder (the study's artifact store, written off
the training thread), alternating which goes first. The headline is what the training thread
spends on it, timed in place: copying the state to the CPU after each epoch and waiting for the
writer; the background write (serialise, write, rename) is shown apart, and the paired
difference of the two trainings as a cross-check (it also holds the write's competition for the
cores). Goal: <= 3 % of the trial.

    python benchmarks/overhead.py              # 8 trials x 3 rounds
    python benchmarks/overhead.py --quick      # the short version run_all uses
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO
from unittest import mock

import optuna
import torch

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import goal_verdict, machine_line, median, parser_with_modes, result_line, table  # noqa: E402
from search.study.dataset import record_or_check_split  # noqa: E402
from search.study.objective import _Reporter  # noqa: E402
from search.study.spec import StudySpec, create_or_resume, fill_budget  # noqa: E402
from search.study.worker import WorkerSettings, worker_loop  # noqa: E402
from search.trial.data import TrialData, make_split, prepare_data  # noqa: E402
from search.trial.datasets import ImageSet, load_dataset  # noqa: E402
from search.trial.measure import measure_latency_ms  # noqa: E402
from search.trial.models import build_model  # noqa: E402
from search.trial.resume import CheckpointWriter  # noqa: E402
from search.trial.train import _capture as real_capture  # noqa: E402
from search.trial.train import fit as real_fit  # noqa: E402
from search.trial.train import train  # noqa: E402
from spaces import Space, parse_space  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402
from storage import open_storage  # noqa: E402
from storage.artifacts import WholeFileArtifactStore  # noqa: E402

GOAL_PERCENT = 5.0
CHECKPOINT_GOAL_PERCENT = 3.0


def trial_space(epochs: int, width: int) -> Space:
    """A small searched space whose trials all cost about the same: the architecture size is fixed."""
    return parse_space({
        "description": "overhead benchmark: fixed small CNN, searched optimiser settings",
        "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
            "batch_norm": {"type": "bool"},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "depth": 2, "width": width, "epochs": epochs, "batch_size": 64,
        },
    }, source="overhead-space")


def run_study(space: Space, dataset: str, images: ImageSet, data: TrialData, trials: int, folder: str,
              round_: int) -> tuple[dict[str, float], list[TrialConfig]]:
    """Create a SQLite study of ``trials`` trials and work it with the worker loop.

    Returns seconds, and the configs the study ran. Seconds: ``setup`` (storage, study,
    split record, ``fill_budget``: once per study, as ``cnnsearch run`` does it), ``loop``
    (the worker loop), ``start`` (from the loop's start to its first trial's training: once
    per worker), ``between`` (mean time between one trial's training and the next's:
    the per-trial work of the loop, ``tell`` to the next claim, config and attrs) and
    ``reports`` (per trial: the per-epoch report calls made during training). The trainings
    are ``search.study.objective.fit`` calls and the reports the calls of
    ``search.study.objective._Reporter``, each timed by a pass-through wrapper.
    """
    url = f"sqlite:///{folder}/overhead-{round_}.db"
    name = f"overhead-{round_}"
    spec = StudySpec(space=space, dataset=dataset, sampler="tpe", pruner="none", seed=round_, budget=trials)
    split = make_split(images.labels, **spec.split_args())
    started = time.perf_counter()
    study = create_or_resume(open_storage(url), name, spec)
    record_or_check_split(study, spec, images, split)
    fill_budget(study, spec)
    setup = time.perf_counter() - started
    fits: list[tuple[float, float]] = []
    reports: list[float] = []

    def timed_fit(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real_fit(*args, **kwargs)
        finally:
            fits.append((start, time.perf_counter()))

    real_report = _Reporter.__call__

    def timed_report(self: _Reporter, *report_args: Any) -> None:
        start = time.perf_counter()
        try:
            real_report(self, *report_args)
        finally:
            reports.append(time.perf_counter() - start)

    started = time.perf_counter()
    with mock.patch("search.study.objective.fit", timed_fit), mock.patch.object(_Reporter, "__call__", timed_report):
        summary = worker_loop(url, name, WorkerSettings(device="cpu", parallel=False), data=data)
    wall = time.perf_counter() - started
    if summary.counts.get("COMPLETE") != trials:
        raise RuntimeError(f"the study ran {summary.counts}, expected {trials} complete trials")
    if len(fits) != trials:
        raise RuntimeError(f"search.study.objective called fit {len(fits)} times for {trials} trials: it no "
                           "longer trains through search.study.objective.fit; update benchmarks/overhead.py")
    gaps = [nxt[0] - prev[1] for prev, nxt in zip(fits, fits[1:], strict=False)]
    seconds = {"setup": setup, "loop": wall, "start": fits[0][0] - started,
               "between": sum(gaps) / len(gaps) if gaps else float("nan"), "reports": sum(reports) / trials}
    done = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=None))
    return seconds, [TrialConfig.from_dict(t.user_attrs["config"]) for t in sorted(done.trials, key=lambda t: t.number)]


def run_direct(configs: list[TrialConfig], data: TrialData) -> float:
    """Wall seconds of training ``configs`` with ``train(..., measure=False)`` in a plain loop."""
    started = time.perf_counter()
    for config in configs:
        train(config, data, "cpu", measure=False)
    return time.perf_counter() - started


class FolderCheckpoints:
    """A trial's resume checkpoint in an artifact store in ``folder``, as a worker writes it; never resumed from."""

    def __init__(self, folder: Path) -> None:
        self.store = WholeFileArtifactStore(folder)
        self.write_seconds = 0.0

    def read(self) -> BinaryIO | None:
        return None

    def write(self, body: BinaryIO, epoch: int, step: int) -> None:
        started = time.perf_counter()
        self.store.write("resume-benchmark.pt", body)
        self.write_seconds += time.perf_counter() - started

    def resumed(self, epoch: int, step: int, curves: dict[str, list[float]]) -> None:
        raise AssertionError("the benchmark's checkpoints are never read")

    def skipped(self, reason: str) -> None:
        raise AssertionError("the benchmark's checkpoints are never read")


def checkpoint_cost(config: TrialConfig, data: TrialData, folder: Path, rounds: int) -> list[dict[str, float]]:
    """Seconds per round: ``plain`` and ``checkpointed`` trainings of ``config`` (alternating which goes first),
    and in the checkpointed one ``capture`` (state to CPU copies), ``wait`` (training thread waiting for
    the writer) and ``write`` (the writer thread's serialise + write, overlapping training)."""
    out = []
    for round_ in range(rounds):
        row: dict[str, float] = {}
        for name in (["plain", "checkpointed"] if round_ % 2 == 0 else ["checkpointed", "plain"]):
            started = time.perf_counter()
            if name == "plain":
                real_fit(config, data, "cpu", measure=False)
            else:
                row.update(checkpointed_fit(config, data, folder))
            row[name] = time.perf_counter() - started
        out.append(row)
    return out


def checkpointed_fit(config: TrialConfig, data: TrialData, folder: Path) -> dict[str, float]:
    """Train ``config`` with a checkpoint in ``folder`` after every epoch; the seconds of its parts."""
    parts = {"capture": 0.0, "wait": 0.0}
    real_flush = CheckpointWriter.flush

    def capture(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_capture(*args, **kwargs)
        finally:
            parts["capture"] += time.perf_counter() - started

    def flush(self: CheckpointWriter) -> None:
        started = time.perf_counter()
        try:
            real_flush(self)
        finally:
            parts["wait"] += time.perf_counter() - started

    folder.mkdir(exist_ok=True)
    checkpoints = FolderCheckpoints(folder)
    with mock.patch("search.trial.train._capture", capture), mock.patch.object(CheckpointWriter, "flush", flush):
        real_fit(config, data, "cpu", measure=False, checkpoints=checkpoints)
    shutil.rmtree(folder)
    return {**parts, "write": checkpoints.write_seconds}


def latency_seconds(configs: list[TrialConfig], data: TrialData) -> float:
    """Seconds the latency measurements of ``configs``' models take, in total."""
    latency = 0.0
    for config in configs:
        model = build_model(config, data.input_shape, data.num_classes)
        started = time.perf_counter()
        measure_latency_ms(model, data.input_shape, "cpu")
        latency += time.perf_counter() - started
    return latency


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(
        __doc__, quick="3 trials x 2 rounds (about a minute)",
        smoke="seconds: digits, 2 tiny trials, 1 round (tests)")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 8)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per trial (default 2: about 3-s trials on one quiet CPU thread; 1 with "
                             "--smoke)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    torch.set_num_threads(args.threads)
    dataset = "digits" if args.smoke else "mnist5k"
    trials = args.trials or (2 if args.smoke else 3 if args.quick else 8)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 3)
    epochs = args.epochs or (1 if args.smoke else 2)
    if min(trials, rounds, epochs) < 1:
        parser.error(f"--trials {trials}, --rounds {rounds}, --epochs {epochs}: each must be at least 1")
    space = trial_space(epochs, width=4 if args.smoke else 16)
    default = TrialConfig().replace(epochs=1, width=4) if args.smoke else TrialConfig()
    images = load_dataset(dataset)
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu")

    rows: list[dict[str, float]] = []  # one per round, ms per trial
    with tempfile.TemporaryDirectory(prefix="cnnsearch-overhead-") as folder:
        if not args.smoke:  # first-call costs (lazy imports, allocator) out of the timed rounds
            # A worker imports optuna-dashboard once, for its first study note (0.1-3 s): a cost per
            # worker, which would otherwise land between the first round's first two trials.
            import optuna_dashboard  # noqa: F401
            run_direct([space.config_from_params({"lr": 0.01, "optimizer": "adam", "batch_norm": True,
                                                  "dropout": 0.0})], data)
        for round_ in range(rounds):
            seconds, configs = run_study(space, dataset, images, data, trials, folder, round_)
            direct = run_direct(configs, data)
            latency = latency_seconds(configs, data)
            rows.append({key: 1000 * value / trials for key, value in (
                ("study", seconds["loop"]), ("direct", direct), ("latency", latency))})
            rows[-1].update({key: 1000 * seconds[key] for key in ("setup", "start", "between", "reports")})
        checkpoint_rows = checkpoint_cost(default, data, Path(folder) / "checkpoints", rounds)

    def med(key: str) -> float:
        return median([r[key] for r in rows])

    overhead = [r["study"] - r["direct"] for r in rows]
    share = [100 * (r["study"] - r["direct"]) / r["direct"] for r in rows]
    parts = [r["between"] + r["reports"] + r["latency"] for r in rows]
    parts_share = [100 * p / r["direct"] for p, r in zip(parts, rows, strict=True)]
    print(f"per-trial overhead: {dataset}, {trials} trials x {rounds} interleaved rounds (study, direct, ...), "
          f"epochs per trial {epochs}, SQLite, torch threads {torch.get_num_threads()}, medians")
    print(machine_line())
    print(table(["trial via", "ms/trial", "% of trial"], [
        ["cnnsearch worker loop on a SQLite study", med("study"), float("nan")],
        ["train(measure=False) in a loop", med("direct"), 100.0],
        ["overhead by parts, each measured in the same round:", median(parts), median(parts_share)],
        ["  worker loop between trainings (tell, claim, sampler, attrs, note)", med("between"),
         median([100 * r["between"] / r["direct"] for r in rows])],
        ["  per-epoch reports during training (intermediate values, pruner)", med("reports"),
         median([100 * r["reports"] / r["direct"] for r in rows])],
        ["  latency measurement (batch 1)", med("latency"), median([100 * r["latency"] / r["direct"] for r in rows])],
        ["cross-check: worker loop - train loop (noisy)", median(overhead), median(share)],
        ["worker start until its first training, once per worker", med("start"), float("nan")],
        [f"study setup, once per study (storage, study, {trials} enqueued trials)", med("setup"), float("nan")],
    ]))
    pct = median(parts_share)
    met = goal_verdict(pct <= GOAL_PERCENT, args.smoke)
    print(f"\noverhead by parts {median(parts):.0f} ms per trial = {pct:.1f} % of a {med('direct') / 1000:.1f}-s "
          f"trial; cross-check, worker loop - train loop: {median(overhead):.0f} ms = {median(share):.1f} % "
          f"(rounds: {', '.join(f'{s:.1f} %' for s in share)})")
    print(result_line("overhead", f"{median(parts):.0f} ms = {pct:.1f} % of a {med('direct') / 1000:.1f}-s trial "
                                  f"(goal <= {GOAL_PERCENT:g} %: {met}); loops' difference {median(share):.1f} %"))
    print_checkpoint_cost(checkpoint_rows, default, dataset, args.smoke)
    return 0


def print_checkpoint_cost(rows: list[dict[str, float]], config: TrialConfig, dataset: str, smoke: bool) -> None:
    """The resume checkpoint's table and RESULT line (see the module docstring)."""
    def ms(key: str) -> float:
        return 1000 * median([r[key] for r in rows])

    def pct(values: list[float]) -> float:
        return median([100 * v / r["plain"] for v, r in zip(values, rows, strict=True)])

    on_thread = [r["capture"] + r["wait"] for r in rows]
    difference = [r["checkpointed"] - r["plain"] for r in rows]
    print(f"\nresume checkpoint after every epoch: {dataset}, the default config (width {config.width}, depth "
          f"{config.depth}, {config.epochs} epochs, {config.optimizer}), {len(rows)} rounds alternating, medians")
    print(table(["fit of the default config", "ms/trial", "% of trial"], [
        ["without checkpoints", ms("plain"), 100.0],
        ["with a checkpoint after every epoch", ms("checkpointed"), pct([r["checkpointed"] for r in rows])],
        ["checkpoint cost on the training thread:", 1000 * median(on_thread), pct(on_thread)],
        ["  state copied to the CPU", ms("capture"), pct([r["capture"] for r in rows])],
        ["  waiting for the writer (the next epoch's, the last)", ms("wait"), pct([r["wait"] for r in rows])],
        ["background write: serialise, write, rename (overlaps training)", ms("write"),
         pct([r["write"] for r in rows])],
        ["cross-check: with - without (noisy)", 1000 * median(difference), pct(difference)],
    ]))
    share = pct(on_thread)
    met = goal_verdict(share <= CHECKPOINT_GOAL_PERCENT, smoke)
    print(result_line("overhead checkpoint", f"{1000 * median(on_thread):.0f} ms = {share:.2f} % of a "
                                             f"{ms('plain') / 1000:.1f}-s default-config trial on the training "
                                             f"thread (goal <= {CHECKPOINT_GOAL_PERCENT:g} %: {met}); with - "
                                             f"without {pct(difference):.1f} %"))


if __name__ == "__main__":
    sys.exit(main())
