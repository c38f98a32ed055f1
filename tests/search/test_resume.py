"""A training run stopped anywhere continues from its checkpoint as if it had never stopped."""

from __future__ import annotations

import io
from typing import BinaryIO

import pytest
import torch

from search.trial.data import make_split, prepare_data
from search.trial.datasets import load_dataset
from search.trial.resume import FORMAT_VERSION
from search.trial.train import fit
from spaces.schema import TrialConfig


class MemoryCheckpoints:
    """A trial's checkpoint in memory, with what training told it."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.written: list[tuple[int, int]] = []
        self.resumed_at: tuple[int, int, dict] | None = None
        self.skips: list[str] = []

    def read(self) -> BinaryIO | None:
        return io.BytesIO(self.body) if self.body is not None else None

    def write(self, body: BinaryIO, epoch: int, step: int) -> None:
        self.body = body.read()
        self.written.append((epoch, step))

    def resumed(self, epoch: int, step: int, curves: dict[str, list[float]]) -> None:
        self.resumed_at = (epoch, step, curves)

    def skipped(self, reason: str) -> None:
        self.skips.append(reason)


class Stopped(BaseException):
    """What a worker told to stop raises (a BaseException, as WorkerStopped is)."""


@pytest.fixture(scope="module")
def digits():
    images = load_dataset("digits")
    return prepare_data(images, make_split(images.labels, seed=0), "cpu")


@pytest.fixture(scope="module")
def streamed_digits():
    """The same split, streamed from the host a batch at a time (as data over the device's budget is)."""
    images = load_dataset("digits")
    data = prepare_data(images, make_split(images.labels, seed=0), "cpu", data_memory=1)
    assert data.feed["mode"] == "stream"
    return data


# Dropout draws from torch's global generator, the augmentation from the run's: both must be restored.
CONFIG = TrialConfig.from_dict({"width": 4, "depth": 1, "epochs": 3, "batch_size": 128, "dropout": 0.2,
                                "optimizer": "adamw", "schedule": "onecycle", "aug_flip": True, "aug_translate": 2,
                                "seed": 3})


def _stop_at(step: int):
    """A ``stop`` that raises after the ``step``-th training step of the run."""
    count = 0

    def stop() -> None:
        nonlocal count
        count += 1
        if count == step:
            raise Stopped

    return stop


def _reported():
    values: list[tuple[int, float, float]] = []
    return values, lambda epoch, scores: values.append((epoch, scores["val_accuracy"], scores["val_loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("feed", ["digits", "streamed_digits"])
def test_a_run_stopped_mid_epoch_resumes_there_and_equals_an_uninterrupted_run(
        feed: str, request: pytest.FixtureRequest) -> None:
    digits = request.getfixturevalue(feed)
    _, whole = fit(CONFIG, digits, "cpu", measure=False)
    checkpoints = MemoryCheckpoints()
    steps_per_epoch = -(-len(digits.train_y) // CONFIG.batch_size)
    with pytest.raises(Stopped):
        fit(CONFIG, digits, "cpu", measure=False, checkpoints=checkpoints, stop=_stop_at(steps_per_epoch + 5))
    assert checkpoints.written[-1] == (1, 5)  # saved at once: the step it stopped after

    reports, report = _reported()
    _, resumed = fit(CONFIG, digits, "cpu", report, measure=False, checkpoints=checkpoints)
    epoch, step, curves = checkpoints.resumed_at
    assert (epoch, step) == (1, 5) and curves["val_accuracy"] == whole.curves["val_accuracy"][:1]
    assert [r[0] for r in reports] == [2, 3]  # only the epochs it trained are reported
    assert resumed.curves == whole.curves
    assert resumed.val_accuracy == whole.val_accuracy and resumed.val_loss == whole.val_loss
    assert any("resumed from the checkpoint after epoch 1, step 5 of epoch 2" in n for n in resumed.notes)


@pytest.mark.slow
def test_a_run_killed_after_an_epoch_resumes_from_that_epochs_checkpoint(digits) -> None:
    _, whole = fit(CONFIG, digits, "cpu", measure=False)
    checkpoints = MemoryCheckpoints()
    with pytest.raises(Stopped):  # raised inside the 2nd epoch's report: the 2nd epoch's checkpoint is written
        fit(CONFIG, digits, "cpu", lambda epoch, *_: (_ for _ in ()).throw(Stopped) if epoch == 2 else None,
            measure=False, checkpoints=checkpoints)
    assert checkpoints.written == [(1, 0), (2, 0)]
    _, resumed = fit(CONFIG, digits, "cpu", measure=False, checkpoints=checkpoints)
    assert checkpoints.resumed_at[:2] == (2, 0)
    assert resumed.curves == whole.curves and resumed.val_accuracy == whole.val_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "other_format", "other_config"])
def test_a_checkpoint_that_does_not_fit_is_skipped_with_a_note_and_training_starts_over(digits, damage) -> None:
    config = CONFIG.replace(epochs=1)
    _, whole = fit(config, digits, "cpu", measure=False)
    checkpoints = MemoryCheckpoints()
    if damage == "other_config":
        fit(config.replace(width=6), digits, "cpu", measure=False, checkpoints=checkpoints)
    else:
        fit(config, digits, "cpu", measure=False, checkpoints=checkpoints)
        state = torch.load(io.BytesIO(checkpoints.body), weights_only=True)
        if damage == "truncated":
            checkpoints.body = checkpoints.body[: len(checkpoints.body) // 2]
        else:
            body = io.BytesIO()
            torch.save({**state, "format": FORMAT_VERSION + 1}, body)
            checkpoints.body = body.getvalue()
    _, again = fit(config, digits, "cpu", measure=False, checkpoints=checkpoints)
    assert checkpoints.resumed_at is None and len(checkpoints.skips) == 1
    assert any(n.startswith("checkpoint skipped, trained from the beginning") for n in again.notes)
    assert again.curves == whole.curves
