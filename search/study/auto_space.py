"""The facts the ``auto`` space is derived from: the data's shape and the measured speed here.

:mod:`spaces.derive` holds the rules; this module reads what they need from the loaded
dataset (its training split only: val and test are never looked at) and times the median
network on this machine, so that ``cnnsearch run`` without ``--space`` can derive a space
sized for the data and the budget.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from search.trial.data import Split
from search.trial.datasets import ImageSet
from search.trial.models import build_model
from search.trial.train import make_loss, make_optimizer
from spaces.derive import Budget, DataFacts, Derivation, derive_space, median_network
from spaces.schema import TrialConfig

SAMPLE_IMAGES = 1_000  # training images the blank-pixel share is computed on
TIMING_WINDOWS = 5  # time steps in this many short windows and keep the fastest ...
WINDOW_SECONDS, MAX_WINDOW_STEPS = 0.1, 10  # ... each at least one step and this long, at most this many steps


def data_facts(images: ImageSet, split: Split) -> DataFacts:
    """What :func:`spaces.derive.derive_space` reads from the data, from the training split alone."""
    channels, height, width = (int(n) for n in images.images.shape[1:])
    train = torch.as_tensor(split.train)
    sample = images.images[train[:SAMPLE_IMAGES]]
    # The darkest and lightest tenth of the 0-255 range: ink and blank page.
    blank = ((sample <= 25) | (sample >= 230)).float().mean().item()
    return DataFacts(channels=channels, height=height, width=width, classes=len(images.classes),
                     train_images=len(split.train), blank_fraction=round(blank, 4))


def epoch_seconds(config: TrialConfig, images: ImageSet, split: Split, device: torch.device) -> float:
    """Seconds one epoch of ``config`` takes on ``device``: timed training steps and a val batch, scaled up.

    Measured on real training images (random crops of the augmentation left out: they cost
    little next to the network), with the threads torch has been given for a worker.
    """
    model = build_model(config, tuple(images.images.shape[1:]), len(images.classes)).to(device)
    optimizer = make_optimizer(config, model.parameters())
    loss_fn = make_loss(config)
    batch = min(config.batch_size, len(split.train))
    index = torch.as_tensor(split.train)[:batch]
    x = images.images[index].to(device).float().div_(255.0)
    y = images.labels[index].to(device)

    def step() -> None:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step_time = _timed(step, device)
    model.eval()
    with torch.inference_mode():
        eval_time = _timed(lambda: F.cross_entropy(model(x), y), device)
    return (math.ceil(len(split.train) / batch) * step_time + math.ceil(len(split.val) / batch) * eval_time)


def _timed(action, device: torch.device) -> float:
    """Seconds per call of ``action``: the fastest of a few short windows, after two warm-up calls.

    The minimum, as ``timeit`` advises: other processes on a shared machine only ever add
    time, and one busy second must not set a whole study's epoch range.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        action()
    sync()
    fastest = math.inf
    for _ in range(TIMING_WINDOWS):
        start, calls = time.perf_counter(), 0
        while calls < MAX_WINDOW_STEPS and (calls < 1 or time.perf_counter() - start < WINDOW_SECONDS):
            action()
            calls += 1
            sync()
        fastest = min(fastest, (time.perf_counter() - start) / calls)
    return fastest


def derive_for(images: ImageSet, split: Split, device: torch.device, *, seconds_left: float | None,
               trials: int | None, workers: int, measured_on: str, trial_timeout: float | None = None,
               folds: int = 1) -> Derivation:
    """The ``auto`` space for this data and budget, with the median network timed on ``device``.

    ``seconds_left`` is taken after the timing: the time it takes is the search's. With
    ``--cv`` a trial trains ``folds`` models, so one of its epochs costs ``folds`` epochs.
    """
    facts = data_facts(images, split)
    started = time.monotonic()
    seconds = folds * epoch_seconds(TrialConfig.from_dict(median_network(facts), where="auto space"), images, split,
                                    device)
    if folds > 1:
        measured_on += f"; x {folds} folds a trial"
    if seconds_left is not None:
        seconds_left = max(0.0, seconds_left - (time.monotonic() - started))
    budget = Budget(seconds=None if seconds_left is None else round(seconds_left, 1), trials=trials, workers=workers,
                    epoch_seconds=float(f"{max(seconds, 1e-6):.3g}"), measured_on=measured_on,
                    trial_timeout=trial_timeout)
    return derive_space(facts, budget)
