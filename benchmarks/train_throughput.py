"""Training throughput of ``search.trial.train.train`` against two hand-written PyTorch loops.

For each model config, three ways to train the same model (``search.trial.models.build_model``),
with the same optimizer, batch size, number of epochs and on-device data, run
interleaved (train, DataLoader, raw, train, DataLoader, raw, ...):

- ``train``: ``search.trial.train.train(config, data, device, measure=False)``, the call every
  trial makes (its schedule, loss, finiteness checks, per-epoch validation, FLOP count);
- ``dataloader``: a plain loop over ``DataLoader(TensorDataset(x, y), shuffle=True)``
  of the normalised float images;
- ``raw``: the same loop over index slices of the normalised float tensor.

The two loops validate on the val split after every epoch as ``train`` does, so each
variant's wall time covers the same work: build, train, validate. img/s is training images
per second of that wall time. Goal: ``train`` >= 0.95x ``raw``.

    python benchmarks/train_throughput.py            # mnist5k, 3 configs, 1 epoch, 5 rounds
    python benchmarks/train_throughput.py --quick    # the short version run_all uses
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import (  # noqa: E402
    goal_verdict,
    interleaved,
    machine_line,
    median,
    parser_with_modes,
    result_line,
    table,
    timed,
)
from search.trial.data import TrialData, make_split, prepare_data  # noqa: E402
from search.trial.datasets import load_dataset  # noqa: E402
from search.trial.models import build_model  # noqa: E402
from search.trial.train import make_optimizer, train  # noqa: E402
from spaces import load_space  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402

GOAL = 0.95


def model_configs() -> dict[str, TrialConfig]:
    """The model sizes measured: the published MNIST baseline, the default config's CNN and a wider, deeper one."""
    baseline = TrialConfig.from_dict(load_space("mnist-baseline").fixed)
    default = TrialConfig()
    wide = TrialConfig.from_dict({"depth": 2, "width": 48, "batch_size": 128})
    return {"mnist-baseline": baseline, "default": default, "wide": wide}


def _float_data(data: TrialData) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float train and val images, made once (what a hand-written loop would hold)."""
    return data.normalize(data.train_x), data.normalize(data.val_x)


def _validate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), 1024):
            correct += (model(x[start:start + 1024]).argmax(1) == y[start:start + 1024]).sum().item()
    model.train()
    return correct / len(y)


def _loop(config: TrialConfig, data: TrialData,
          epoch_batches: Callable[[torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> float:
    """A plain training loop over ``epoch_batches(train_x)`` each epoch; returns the last epoch's val accuracy."""
    torch.manual_seed(config.seed)
    train_x, val_x = _float_data(data)
    model = build_model(config, data.input_shape, data.num_classes)
    optimizer = make_optimizer(config, model.parameters())
    acc = 0.0
    for _ in range(config.epochs):
        model.train()
        for xb, yb in epoch_batches(train_x):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        acc = _validate(model, val_x, data.val_y)
    return acc


def raw_loop(config: TrialConfig, data: TrialData) -> float:
    """Index-slice training loop; returns the last epoch's val accuracy."""
    n, y = len(data.train_y), data.train_y
    return _loop(config, data, lambda x: ((x[idx], y[idx]) for idx in torch.randperm(n).split(config.batch_size)))


def dataloader_loop(config: TrialConfig, data: TrialData) -> float:
    """The textbook loop: DataLoader over a TensorDataset; returns the last epoch's val accuracy."""
    return _loop(config, data, lambda x: DataLoader(TensorDataset(x, data.train_y), batch_size=config.batch_size,
                                                    shuffle=True))


def train_call(config: TrialConfig, data: TrialData) -> float:
    """The call a trial makes; returns the last epoch's val accuracy."""
    return train(config, data, "cpu", measure=False).val_accuracy


VARIANTS = {"train": train_call, "dataloader": dataloader_loop, "raw": raw_loop}


def measure(configs: dict[str, TrialConfig], data: TrialData, rounds: int, warmup: bool) -> list[list[Any]]:
    """One table row per config: median img/s of each variant, and the median over rounds of
    each round's ratio to ``raw`` (a ratio within one round is the one noise hits least).

    ``warmup`` first runs each variant once, untimed, on the first config (lazy imports,
    allocator, first-call costs of the process).
    """
    if warmup:
        first = next(iter(configs.values()))
        for f in VARIANTS.values():
            f(first.replace(epochs=1), data)
    rows = []
    n_train = len(data.train_y)
    for name, config in configs.items():
        images = config.epochs * n_train
        runners = {v: (lambda f=f, c=config: timed(lambda: f(c, data))) for v, f in VARIANTS.items()}
        results = interleaved(runners, rounds)
        ips = {v: median([images / wall for wall, _, _ in runs]) for v, runs in results.items()}
        print(f"{name}: " + ", ".join(f"{v} {', '.join(f'{images / w:.0f}' for w, _, _ in runs)} img/s"
                                      for v, runs in results.items()), file=sys.stderr, flush=True)
        accs = {v: median([acc for _, _, acc in runs]) for v, runs in results.items()}

        rows.append([name, config.batch_size, config.epochs, ips["train"], ips["dataloader"], ips["raw"],
                     _ratio(results, "train", 0), _ratio(results, "dataloader", 0),
                     _ratio(results, "train", 1), _ratio(results, "dataloader", 1),
                     f"{accs['train']:.3f}/{accs['dataloader']:.3f}/{accs['raw']:.3f}"])
    return rows


def _ratio(results: dict[str, list[tuple[float, float, float]]], variant: str, clock: int) -> float:
    """Median over rounds of that round's raw time / ``variant`` time (clock 0: wall, 1: CPU)."""
    pairs = zip(results[variant], results["raw"], strict=True)
    return median([raw[clock] / mine[clock] for mine, raw in pairs])


HEADERS = ["config", "batch", "epochs", "train img/s", "DataLoader img/s", "raw img/s", "train/raw",
           "DataLoader/raw", "train/raw CPU", "DataLoader/raw CPU", "val acc train/DL/raw"]


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(
        __doc__, quick="mnist-baseline and default configs on 1,000 train images, 3 rounds (under a minute)",
        smoke="seconds: digits, the default config, 1 round (tests)")
    parser.add_argument("--dataset", default=None, help="dataset name (default mnist5k; digits with --smoke)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on the first N images of the train split (default all; 1000 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds (default 5; 3 with --quick, 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine 2 threads on 2 cores stall "
                             "each other's OpenMP barriers and the timings scatter)")
    parser.add_argument("--configs", default=None, help="comma-separated subset of: mnist-baseline,default,wide")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    torch.set_num_threads(args.threads)
    dataset = args.dataset or ("digits" if args.smoke else "mnist5k")
    epochs = args.epochs
    rounds = args.rounds or (1 if args.smoke else 3 if args.quick else 5)
    configs = model_configs()
    default_configs = ["default"] if args.smoke else ["mnist-baseline", "default"] if args.quick else list(configs)
    wanted = args.configs.split(",") if args.configs else default_configs
    unknown = [c for c in wanted if c not in configs]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {', '.join(configs)}")
    configs = {name: configs[name].replace(epochs=epochs) for name in wanted}

    images = load_dataset(dataset)
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu")
    train_images = args.train_images or (1000 if args.quick else None)
    if train_images is not None:
        if not 1 <= train_images <= len(data.train_y):
            parser.error(f"--train-images {train_images}: give 1 to {len(data.train_y)}")
        data.train_x, data.train_y = data.train_x[:train_images], data.train_y[:train_images]
    print(f"train throughput: {dataset} ({len(data.train_y)} train / {len(data.val_y)} val images), CPU, "
          f"torch threads {torch.get_num_threads()}, {rounds} interleaved rounds, medians")
    print(machine_line())
    rows = measure(configs, data, rounds, warmup=not args.smoke)
    print(table(HEADERS, rows))
    worst, worst_cpu = min(row[6] for row in rows), min(row[8] for row in rows)
    met = goal_verdict(worst >= GOAL, args.smoke)
    print(result_line("train_throughput", f"worst train/raw {worst:.3f} by wall time, {worst_cpu:.3f} by CPU time "
                                          f"(goal >= {GOAL}: {met})"))
    return 0 if math.isfinite(worst) else 1


if __name__ == "__main__":
    sys.exit(main())
