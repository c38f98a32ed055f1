"""Per-trial overhead of cnnsearch itself, as a share of a ~3-second trial.

Two ways to train the same configs, interleaved (A B A B ...):

- ``study``: a fresh SQLite study (``create_or_resume`` + ``fill_budget``, as ``cnnsearch run``
  does) worked by the real worker loop (``search.worker.worker_loop``): sampler, trial
  claim, heartbeat thread, config/identity/metric user attrs, per-epoch intermediate values
  and pruner calls, FLOP count, latency and throughput measurement, ``tell``;
- ``direct``: the configs that study ran (its trials' ``config`` user attrs, seeds
  included) trained by calling ``search.train.train(config, data, "cpu", measure=False)``
  in a loop.

Both get the same on-device data (loading it is a once-per-worker cost, not per trial).
Overhead per trial = (worker-loop wall - direct wall) / trials; the study's setup (storage,
study, split record, enqueueing the budget) happens once per study and is shown apart. To say what dominates, the
latency/throughput measurement is also timed alone on each config's model (it is the part
of the overhead that scales with the model, not with the storage). Goal: <= 5 %.

    python benchmarks/overhead.py              # 8 trials x 3 rounds
    python benchmarks/overhead.py --quick      # the short version run_all uses
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import machine_line, median, result_line, table  # noqa: E402
from search.data import TrialData, make_split, prepare_data  # noqa: E402
from search.datasets import ImageSet, load_dataset  # noqa: E402
from search.measure import measure_latency_ms, measure_throughput  # noqa: E402
from search.models import build_model  # noqa: E402
from search.study import StudySpec, create_or_resume, fill_budget  # noqa: E402
from search.train import train  # noqa: E402
from search.worker import record_or_check_split, worker_loop  # noqa: E402
from spaces import Space, parse_space  # noqa: E402
from storage import open_storage  # noqa: E402

GOAL_PERCENT = 5.0


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
              round_: int) -> tuple[float, float, list[dict[str, Any]]]:
    """Create a SQLite study of ``trials`` trials and work it with the worker loop.

    Returns the wall seconds of the setup (storage, study, split record, ``fill_budget``:
    once per study, as ``cnnsearch run`` does it), of the worker loop, and the configs it ran.
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
    started = time.perf_counter()
    summary = worker_loop(url, name, device="cpu", data=data, parallel=False)
    wall = time.perf_counter() - started
    if summary.counts.get("COMPLETE") != trials:
        raise RuntimeError(f"the study ran {summary.counts}, expected {trials} complete trials")
    done = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_interval=None))
    return setup, wall, [t.user_attrs["config"] for t in sorted(done.trials, key=lambda t: t.number)]


def run_direct(configs: list[dict[str, Any]], data: TrialData) -> float:
    """Wall seconds of training ``configs`` with ``train(..., measure=False)`` in a plain loop."""
    started = time.perf_counter()
    for config in configs:
        train(config, data, "cpu", measure=False)
    return time.perf_counter() - started


def measurement_seconds(configs: list[dict[str, Any]], data: TrialData) -> tuple[float, float]:
    """Seconds the latency and the throughput measurements of ``configs``' models take, in total."""
    latency = throughput = 0.0
    for config in configs:
        model = build_model(config, data.input_shape, data.num_classes)
        started = time.perf_counter()
        measure_latency_ms(model, data.input_shape, "cpu")
        middle = time.perf_counter()
        measure_throughput(model, data.input_shape, "cpu")
        latency += middle - started
        throughput += time.perf_counter() - middle
    return latency, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="4 trials x 2 rounds (about a minute)")
    mode.add_argument("--smoke", action="store_true", help="seconds: digits, 2 tiny trials, 1 round (tests)")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 8)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1: 2-3 s trials)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    torch.set_num_threads(args.threads)
    dataset = "digits" if args.smoke else "mnist5k"
    trials = args.trials or (2 if args.smoke else 4 if args.quick else 8)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 3)
    epochs = args.epochs
    if min(trials, rounds, epochs) < 1:
        parser.error(f"--trials {trials}, --rounds {rounds}, --epochs {epochs}: each must be at least 1")
    space = trial_space(epochs, width=4 if args.smoke else 16)
    images = load_dataset(dataset)
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu")

    setups, study_walls, direct_walls, latency_walls, throughput_walls = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="cnnsearch-overhead-") as folder:
        if not args.smoke:  # first-call costs (lazy imports, allocator) out of the timed rounds
            run_direct([space.config_from_params({"lr": 0.01, "optimizer": "adam", "batch_norm": True,
                                                  "dropout": 0.0})], data)
        for round_ in range(rounds):
            setup, wall, configs = run_study(space, dataset, images, data, trials, folder, round_)
            setups.append(setup)
            study_walls.append(wall)
            direct_walls.append(run_direct(configs, data))
            latency, throughput = measurement_seconds(configs, data)
            latency_walls.append(latency)
            throughput_walls.append(throughput)

    per_trial = [1000 * s / trials for s in study_walls]
    direct = [1000 * d / trials for d in direct_walls]
    overhead = [s - d for s, d in zip(per_trial, direct, strict=True)]
    share = [100 * o / d for o, d in zip(overhead, direct, strict=True)]
    latency = [1000 * m / trials for m in latency_walls]
    throughput = [1000 * m / trials for m in throughput_walls]
    print(f"per-trial overhead: {dataset}, {trials} trials x {rounds} interleaved rounds (study, direct, ...), "
          f"epochs per trial {epochs}, SQLite, torch threads {torch.get_num_threads()}, medians")
    print(machine_line())
    print(table(["trial via", "ms/trial"], [
        ["cnnsearch worker loop on a SQLite study", median(per_trial)],
        ["train(measure=False) in a loop", median(direct)],
        ["overhead", median(overhead)],
        ["  of which throughput measurement (batch 256)", median(throughput)],
        ["  of which latency measurement (batch 1)", median(latency)],
        ["  of which the rest (storage, sampler, heartbeat, claim, attrs)",
         median(overhead) - median(throughput) - median(latency)],
        [f"study setup, once per study (storage, study, {trials} enqueued trials)", 1000 * median(setups)],
    ]))
    pct = median(share)
    met = "met" if pct <= GOAL_PERCENT else "NOT met"
    print(f"\noverhead {median(overhead):.0f} ms per trial = {pct:.1f} % of a {median(direct) / 1000:.1f}-s trial "
          f"(rounds: {', '.join(f'{s:.1f} %' for s in share)})")
    print(result_line("overhead", f"{pct:.1f} % of a {median(direct) / 1000:.1f}-s trial "
                                  f"(goal <= {GOAL_PERCENT:g} %: {met})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
