"""The same search written with Ray Tune, as its docs show: ``Tuner`` + ``OptunaSearch`` + ``ASHAScheduler``.

    python benchmarks/sides/ray_tune.py --dataset mnist5k --seed 0 --budget 120 --t0 T --events FILE

The model family, the training loop and the data split are ``handwritten``'s, as in
``optuna_script.py``. A local Ray cluster with as many CPUs as the harness gives every side
(``OMP_NUM_THREADS``), each trial asking for all of them, so trials run one at a time with the
same torch threads as the other sides. Each trial that trains all its epochs is appended to
``--events`` (seconds since ``--t0``, the harness's clock when it started this process).
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository root, not benchmarks/sides/

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from benchmarks.sides import handwritten  # noqa: E402

PARAM_SPACE = {
    "n_layers": tune.randint(1, 4),
    "filters": tune.choice([16, 32, 64]),
    "kernel": tune.choice([3, 5]),
    "dropout": tune.uniform(0.0, 0.5),
    "lr": tune.loguniform(1e-4, 1e-1),
    "batch_size": tune.choice([32, 64, 128]),
    "optimizer": tune.choice(["adam", "sgd"]),
}


def trainable(config: dict, data: handwritten.Data, t0: float, events: str) -> None:
    # Seeded by its trial id, as trial.number seeds a trial of the Optuna script (Ray numbers none).
    seed = zlib.crc32(tune.get_context().get_trial_id().encode())

    def report(epoch: int, acc: float) -> None:
        if epoch == handwritten.EPOCHS - 1:  # ASHA let it train every epoch: a finished trial
            handwritten.write_event(events, t0, acc, config, seed)
        tune.report({"val_acc": acc})

    handwritten.fit(config, seed, data.train, data.val_x, data.val_y, report)


def main() -> None:
    args = handwritten.side_args()
    cpus = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    data = handwritten.load(args.dataset, args.image_size)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, data=data, t0=args.t0, events=args.events),
                                {"cpu": cpus}),
            param_space=PARAM_SPACE,
            tune_config=tune.TuneConfig(
                metric="val_acc", mode="max", search_alg=OptunaSearch(seed=args.seed),
                scheduler=ASHAScheduler(max_t=handwritten.EPOCHS, grace_period=1), num_samples=-1,
                max_concurrent_trials=1, time_budget_s=max(1.0, args.budget - (time.time() - args.t0))),
            run_config=tune.RunConfig(storage_path=str(Path(args.events).parent / "ray_results"), verbose=0),
        )
        tuner.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
