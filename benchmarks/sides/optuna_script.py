"""The hand-written Optuna search a careful user writes from Optuna's tutorial: TPE, MedianPruner, a DataLoader.

    python benchmarks/sides/optuna_script.py --dataset mnist5k --seed 0 --budget 120 --t0 T --events FILE

Run by ``time_to_accuracy.py`` in a fresh process; torch's threads come from the environment the
harness sets (``OMP_NUM_THREADS``), as for every side. Each trial that trains all its epochs is
appended to ``--events`` (seconds since ``--t0``, the harness's clock when it started this process).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository root, not benchmarks/sides/

import optuna  # noqa: E402

from benchmarks.sides import handwritten  # noqa: E402


def suggest(trial: optuna.Trial) -> dict:
    return {
        "n_layers": trial.suggest_int("n_layers", 1, 3),
        "filters": trial.suggest_categorical("filters", [16, 32, 64]),
        "kernel": trial.suggest_categorical("kernel", [3, 5]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
    }


def main() -> None:
    args = handwritten.side_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = handwritten.load(args.dataset, args.image_size)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial)

        def report(epoch: int, acc: float) -> None:
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        acc = handwritten.fit(params, trial.number, data.train, data.val_x, data.val_y, report)
        handwritten.write_event(args.events, args.t0, acc, params, trial.number)
        return acc

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, timeout=max(1.0, args.budget - (time.time() - args.t0)))


if __name__ == "__main__":
    main()
