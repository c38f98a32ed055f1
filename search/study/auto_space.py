"""The facts the ``auto`` space is derived from: the data's shape and the measured speed here.

:mod:`spaces.derive` holds the rules; this module reads what they need from the loaded
dataset (its training split only: val and test are never looked at) and times the median
network on this machine, so that ``cnnsearch run`` without ``--space`` can derive a space
sized for the data and the budget.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterator

import optuna
import torch
import torch.nn.functional as F

from search.trial.data import Split
from search.trial.datasets import ImageSet
from search.trial.models import build_model
from search.trial.train import make_loss, make_optimizer
from spaces.derive import TYPICAL_DRAWS, Budget, DataFacts, Derivation, derive_space, median_network
from spaces.schema import TrialConfig
from spaces.space import Space

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 1_000  # training images the blank-pixel share is computed on
TIMING_WINDOWS = 5  # time steps in this many short windows and keep the fastest ...
DRAW_WINDOWS = 2  # ... fewer for each drawn network (rule 6): their median, not one timing, sets the pace
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


def epoch_seconds(config: TrialConfig, images: ImageSet, split: Split, device: torch.device, *,
                  windows: int = TIMING_WINDOWS) -> float:
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
    step_time = _timed(step, device, windows)
    model.eval()
    with torch.inference_mode():
        eval_time = _timed(lambda: F.cross_entropy(model(x), y), device, windows)
    return (math.ceil(len(split.train) / batch) * step_time + math.ceil(len(split.val) / batch) * eval_time)


def drawn_configs(space: Space, count: int, seed: int | None) -> Iterator[TrialConfig]:
    """``count`` configs drawn from ``space`` at random, as the sampler draws a study's first trials
    (Optuna's random sampler over the space's distributions, conditions included)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" among run's lines
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _ in range(count):
        config = space.suggest(study.ask())
        yield config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config, where="auto space")


def typical_epoch_seconds(space: Space, images: ImageSet, split: Split, device: torch.device, *, draws: int,
                          seed: int | None) -> tuple[float | None, int]:
    """The median seconds per epoch of ``draws`` networks drawn from ``space`` (:func:`drawn_configs`), and how
    many were timed.

    A draw that cannot be built or run here (out of memory, say) is left out: the trial
    drawing it would fail alike; None when none ran.
    """
    seconds = []
    for config in drawn_configs(space, draws, seed):
        try:
            seconds.append(epoch_seconds(config, images, split, device, windows=DRAW_WINDOWS))
        except (RuntimeError, ValueError) as exc:
            log.info("a config drawn to time the auto space did not run (%s): left out", exc)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return (statistics.median(seconds) if seconds else None), len(seconds)


def _timed(action, device: torch.device, windows: int) -> float:
    """Seconds per call of ``action``: the fastest of a few short windows, after two warm-up calls.

    The minimum, as ``timeit`` advises: other processes on a shared machine only ever add
    time, and one busy second must not set a whole study's epoch range.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        action()
    sync()
    fastest = math.inf
    for _ in range(windows):
        start, calls = time.perf_counter(), 0
        while calls < MAX_WINDOW_STEPS and (calls < 1 or time.perf_counter() - start < WINDOW_SECONDS):
            action()
            calls += 1
            sync()
        fastest = min(fastest, (time.perf_counter() - start) / calls)
    return fastest


def derive_for(images: ImageSet, split: Split, device: torch.device, *, seconds_left: float | None,
               trials: int | None, workers: int, measured_on: str, trial_timeout: float | None = None,
               folds: int = 1, seed: int | None = None) -> Derivation:
    """The ``auto`` space for this data and budget, with the median network and a few drawn ones timed on ``device``.

    ``seconds_left`` is taken after the timing: the time it takes is the search's. With
    ``--cv`` a trial trains ``folds`` models, so one of its epochs costs ``folds`` epochs.
    ``seed`` seeds the draws (the study's seed: the same draws each run).
    """
    facts = data_facts(images, split)
    started = time.monotonic()
    seconds = folds * epoch_seconds(TrialConfig.from_dict(median_network(facts), where="auto space"), images, split,
                                    device)
    median = float(f"{max(seconds, 1e-6):.3g}")
    # The drawn networks' epochs do not depend on the budget: any budget gives the space to draw them from.
    drafted = derive_space(facts, Budget(seconds=seconds_left, trials=trials, workers=workers, epoch_seconds=median,
                                         measured_on=measured_on)).space
    typical, timed = typical_epoch_seconds(drafted, images, split, device, draws=TYPICAL_DRAWS, seed=seed)
    if folds > 1:
        measured_on += f"; x {folds} folds a trial"
    if seconds_left is not None:
        seconds_left = max(0.0, seconds_left - (time.monotonic() - started))
    budget = Budget(seconds=None if seconds_left is None else round(seconds_left, 1), trials=trials, workers=workers,
                    epoch_seconds=median, measured_on=measured_on, trial_timeout=trial_timeout,
                    typical_epoch_seconds=None if typical is None else float(f"{max(folds * typical, 1e-6):.3g}"),
                    typical_draws=timed)
    return derive_space(facts, budget)
