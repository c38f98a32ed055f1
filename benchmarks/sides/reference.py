"""The reference: one hand-picked network trained for the whole budget, as a person does without a search.

    python benchmarks/sides/reference.py --network cnn-bn-adam --dataset digits --seed 0 --budget 180 \\
        --t0 T --events FILE

Issue 18's goal compares the search's best val after 180 s with "what one well-chosen network
reaches in the same time". The networks are textbook recipes written in cnnsearch's own config
language and trained by its trainer (the same code, data on the device, augmentation), picked
before any benchmark ran and never changed after looking at a val score: a VGG-style stack with
batch norm and Adam; a ResNet-style residual net with SGD, momentum and weight decay (He et al.'s
CIFAR recipe); a wide, shallow net with heavy dropout and a one-cycle schedule.

Each network gets the whole budget in a process of its own (counted, as for every side, from the
harness's start of that process): after loading the data, a one-epoch training of it is timed (as a
person times a first run), and the network trains again from scratch for as many epochs as fill
:data:`FILL` of the time left, its schedule spanning them all. Its final val accuracy is appended
to ``--events``. The timed epoch can be faster than the later ones (a machine slows down); when the
next epoch, at the pace of those so far, would end past the budget, training stops and the last
finished epoch's val accuracy is the event, marked ``cut``, its config's epochs set to those it had
(the test retrain gets as many). A person watching would stop it the same way, and a network that
counted for nothing would lower the reference: seeds 1 and 2 of the mnist5k-1k run in BENCHMARKS.md
lost one network each to this before. The shape (stages; shifts scaled to the side) is fitted to
the data as any person does it: as many stages as the image holds, up to the recipe's depth.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository root, not benchmarks/sides/

import torch  # noqa: E402

FILL = 0.8
"""Share of the time left that the epochs are sized to fill: a machine's speed varies, and a network
cut at the budget would count for nothing."""

MARGIN = 2.0
"""Seconds before the budget that the last epoch must end by: writing the event and exiting take time,
and the harness stops the process at the budget."""

NETWORKS: dict[str, dict[str, Any]] = {
    "cnn-bn-adam": {"depth": 3, "width": 32, "growth": 2.0, "kernel": 3, "batch_norm": True, "head": "gap",
                    "dropout": 0.2, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine", "batch_size": 64,
                    "shift": 1 / 8},
    "resnet-sgd": {"depth": 3, "layers": 6, "residual": True, "width": 32, "growth": 2.0, "kernel": 3,
                   "batch_norm": True, "head": "gap", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                   "weight_decay": 5e-4, "schedule": "cosine", "batch_size": 128, "shift": 1 / 8,
                   "init": "kaiming"},
    "wide-onecycle": {"depth": 2, "width": 64, "growth": 2.0, "kernel": 3, "batch_norm": True, "head": "flatten",
                      "dropout": 0.5, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
                      "schedule": "onecycle", "batch_size": 128, "label_smoothing": 0.1, "shift": 1 / 16},
}
"""The hand-picked networks, by name: config keys of spaces/schema.py (the rest at their defaults), and
``shift``, the random translation as a share of the image side (an eighth: CIFAR's 4-px crops of 32 px)."""


def args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--network", required=True, choices=sorted(NETWORKS))
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--events", required=True)
    return parser.parse_args()


def config_for(network: str, seed: int, epochs: int, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """``network``'s recipe with its epochs and seed, its depth cut to the stages the images hold."""
    from search.trial.models import downsampling_capacity

    recipe = dict(NETWORKS[network])
    recipe["aug_translate"] = max(1, round(recipe.pop("shift") * max(input_shape[1:])))
    stages = max(1, downsampling_capacity(input_shape[1], input_shape[2]))
    if recipe["depth"] > stages:
        if "layers" in recipe:  # the same convs per stage
            recipe["layers"] = recipe["layers"] // recipe["depth"] * stages
        recipe["depth"] = stages
    return {**recipe, "epochs": epochs, "seed": seed}


def epochs_for(epoch_seconds: float, left: float) -> int:
    """Epochs that fill :data:`FILL` of the ``left`` seconds, at most the config's largest accepted ``epochs``.

    Tiny images train an epoch in a fifth of a second, and 180 s would ask for more epochs than a
    config takes (that network then failed and counted for nothing).
    """
    from spaces.schema import CONFIG_KEYS

    return min(int(CONFIG_KEYS["epochs"].high), max(1, math.floor(FILL * left / epoch_seconds)))


class OutOfTime(Exception):
    """The next epoch would end past the budget: training stops at the last one that finished."""


class Clock:
    """The long run's per-epoch report: keeps the last epoch's val accuracy and when it came, and raises
    :class:`OutOfTime` when the next epoch, at the mean pace of those so far, would end past ``end``
    less :data:`MARGIN` (both ``time.time()`` values)."""

    def __init__(self, end: float, started: float, epochs: int, now: Callable[[], float] = time.time) -> None:
        self.end, self.started, self.epochs, self.now = end, started, epochs, now
        self.epoch, self.value, self.at = 0, 0.0, started

    def __call__(self, epoch: int, values: dict[str, float]) -> None:
        self.at = self.now()
        self.epoch, self.value = epoch, values["val_accuracy"]
        pace = (self.at - self.started) / epoch
        if epoch < self.epochs and self.at + pace > self.end - MARGIN:
            raise OutOfTime


def main() -> None:
    a = args()
    from benchmarks.sides.handwritten import SPLIT_SEED
    from search.trial.data import make_split, prepare_data
    from search.trial.datasets import load_dataset
    from search.trial.train import train
    from spaces.schema import TrialConfig

    images = load_dataset(a.dataset, image_size=a.image_size)
    split = make_split(images.labels, seed=SPLIT_SEED, parts=images.parts)  # the split every side uses
    shape = tuple(images.images.shape[1:])
    data = prepare_data(images, split, "cpu")
    started = time.time()
    train(TrialConfig.from_dict(config_for(a.network, a.seed, 1, shape), where=a.network), data, "cpu",
          measure=False)
    seconds = time.time() - started
    left = a.budget - (time.time() - a.t0)
    epochs = epochs_for(seconds, left)
    config = config_for(a.network, a.seed, epochs, shape)
    print(f"{a.network}: one epoch took {seconds:.2f} s, {left:.0f} s left: {epochs} epochs", flush=True)
    clock = Clock(a.t0 + a.budget, time.time(), epochs)
    cut: dict[str, str] = {}
    try:
        accuracy = train(TrialConfig.from_dict(config, where=a.network), data, "cpu", clock,
                         measure=False).val_accuracy
        at = time.time() - a.t0
    except OutOfTime:
        accuracy, at = clock.value, clock.at - a.t0
        cut = {"cut": f"cut after epoch {clock.epoch} of {epochs} at {at:.0f} s "
                      f"({(clock.at - clock.started) / clock.epoch:.2f} s an epoch), val {accuracy:.4f}"}
        print(f"{a.network}: {cut['cut']}", flush=True)
        config = {**config, "epochs": clock.epoch}
    event = {"t": at, "value": accuracy, "network": a.network, "config": config, **cut,
             "threads": torch.get_num_threads()}
    with open(a.events, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    main()
