"""What a user writes by hand around Optuna or Ray Tune: the data as tensors, a small CNN, a DataLoader loop.

The Optuna script (``optuna_script.py``) and the Ray Tune script (``ray_tune.py``) search this
same model family on the same data; only the search library around them differs. The data
is cnnsearch's own dataset and split (``load_dataset`` + ``make_split`` with the split seed
cnnsearch records by default), so every side of ``time_to_accuracy.py`` trains on the same
images and is judged on the same val (and, for the pick, test) images.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS = 5
SPLIT_SEED = 0
"""cnnsearch's default ``--split-seed``: every side splits the data as ``cnnsearch run`` does."""


@dataclass
class Data:
    """Normalised float images (statistics of the train part) and labels of each part."""

    train: TensorDataset
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    trainval: TensorDataset
    classes: int


def side_args() -> argparse.Namespace:
    """The command line every side gets from the harness: its data, seed, budget, clock start and event file."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--budget", type=float, required=True)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--events", required=True)
    return parser.parse_args()


def load(dataset: str, image_size: int | None = None) -> Data:
    """``dataset`` (a name ``cnnsearch run --dataset`` takes) split as cnnsearch splits it (decoded images
    cached where ``$CNNSEARCH_CACHE_DIR`` says, as for cnnsearch)."""
    from search.trial.data import make_split
    from search.trial.datasets import load_dataset

    images = load_dataset(dataset, image_size=image_size)
    split = make_split(images.labels, seed=SPLIT_SEED, parts=images.parts)
    x = images.images.float() / 255.0
    mean, std = x[split.train].mean(), x[split.train].std()
    x = (x - mean) / std
    y = images.labels
    trainval = torch.cat([torch.as_tensor(split.train), torch.as_tensor(split.val)])
    return Data(train=TensorDataset(x[split.train], y[split.train]), val_x=x[split.val], val_y=y[split.val],
                test_x=x[split.test], test_y=y[split.test], trainval=TensorDataset(x[trainval], y[trainval]),
                classes=len(images.classes))


def build(params: dict[str, Any], shape: tuple[int, ...], classes: int) -> nn.Module:
    """The CNN of ``params``: ``n_layers`` conv-ReLU-maxpool blocks doubling ``filters``, dropout, a linear head."""
    layers, c, side = [], shape[0], shape[1]
    for i in range(params["n_layers"]):
        layers += [nn.Conv2d(c, params["filters"] * 2 ** i, params["kernel"], padding=params["kernel"] // 2),
                   nn.ReLU(), nn.MaxPool2d(2)]
        c, side = params["filters"] * 2 ** i, side // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(params["dropout"]), nn.Linear(c * side * side, classes))


def fit(params: dict[str, Any], seed: int, train: TensorDataset, eval_x: torch.Tensor, eval_y: torch.Tensor,
        report=None) -> float:
    """Train ``EPOCHS`` epochs; ``report(epoch, accuracy)`` after each (it may raise to stop); the last accuracy."""
    torch.manual_seed(seed)
    x0 = train.tensors[0]
    model = build(params, tuple(x0.shape[1:]), int(train.tensors[1].max()) + 1)
    opt = (torch.optim.Adam(model.parameters(), lr=params["lr"]) if params["optimizer"] == "adam"
           else torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9))
    loader = DataLoader(train, batch_size=params["batch_size"], shuffle=True)
    acc = 0.0
    for epoch in range(EPOCHS):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(eval_x).argmax(1) == eval_y).sum().item() / len(eval_y)  # exact, as cnnsearch's
        if report is not None:
            report(epoch, acc)
    return acc


def test_accuracy(data: Data, params: dict[str, Any], seed: int) -> float:
    """The picked config retrained with its seed on train + val (as cnnsearch's final evaluation), on test."""
    return fit(params, seed, data.trainval, data.test_x, data.test_y)


def write_event(path: str | Path, t0: float, value: float, params: dict[str, Any], seed: int) -> None:
    """Append one finished trial to the harness's events file: seconds since the harness started the process."""
    event = {"t": time.time() - t0, "value": value, "params": params, "seed": seed,
             "threads": torch.get_num_threads()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
