"""A training run's checkpoint: what is in the file, whether it fits the run, and writing it off the training thread.

A checkpoint holds everything that decides how training continues: the weights, the optimizer,
the learning-rate schedule, the GradScaler, the random states (the one generator that draws the
shuffle and the augmentation, and torch's global ones that dropout draws from), the epoch and
the step within it (with the epoch's order and loss so far when the step is not 0), the curves
so far and whether the frozen layers were released. Restored on CPU with the same thread count,
the rest of the run is the one an uninterrupted run would have trained, value for value.

The file holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``
(no code runs from a checkpoint). It records the format version and fingerprints of the config
and of the model's parameter names and shapes: a checkpoint of other code or another model is
refused (:class:`UnusableCheckpoint`) rather than loaded into the wrong run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

import torch
from torch import nn

from spaces.schema import TrialConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever what a checkpoint holds, or what it means, changes: older files are then skipped."""


class CheckpointStore(Protocol):
    """Where one trial's latest checkpoint lives (:class:`search.study.checkpoints.TrialCheckpoint`).

    ``write`` runs on the background writer's thread; the others on the training thread.
    """

    def read(self) -> BinaryIO | None:
        """The latest checkpoint, open for reading; None when there is none."""

    def write(self, body: BinaryIO, epoch: int, step: int) -> None:
        """Replace the latest checkpoint with ``body`` whole or not at all (``epoch`` done, ``step`` of the next).

        Must not raise for a checkpoint that cannot be written: training goes on without it.
        """

    def resumed(self, epoch: int, step: int, curves: dict[str, list[float]]) -> None:
        """Training continues after ``epoch`` (and ``step`` batches of the next); ``curves`` are the epochs done."""

    def skipped(self, reason: str) -> None:
        """The latest checkpoint could not be used (``reason``): training starts from the beginning."""


class UnusableCheckpoint(Exception):
    """A checkpoint that cannot continue this run: unreadable, of another format, config or model."""


def config_fingerprint(config: TrialConfig) -> str:
    """A hash of everything ``config`` sets: a checkpoint continues only the config it was written by."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """A hash of ``model``'s state names, shapes and dtypes: what a state_dict must match to load."""
    lines = (f"{name}:{tuple(value.shape)}:{value.dtype}" for name, value in model.state_dict().items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def stamp(config: TrialConfig, model: nn.Module) -> dict[str, Any]:
    """The fields that say which code, config and model a checkpoint belongs to."""
    return {"format": FORMAT_VERSION, "config": config_fingerprint(config), "model_keys": model_fingerprint(model)}


def cpu_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU (copies, so training can go on changing the originals)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(v) for v in value)
    return value


def read_state(store: CheckpointStore, config: TrialConfig, model: nn.Module) -> dict[str, Any] | None:
    """The latest checkpoint in ``store`` if it belongs to ``config`` and ``model``; None when there is none.

    Raises:
        UnusableCheckpoint: the file is there but cannot continue this run; the message says why.
    """
    try:
        body = store.read()
    except OSError as exc:
        raise UnusableCheckpoint(f"unreadable ({exc})") from exc
    if body is None:
        return None
    with body:
        try:
            # On the CPU whatever device wrote it: load_state_dict moves each value to its parameter's device.
            state = torch.load(body, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
            raise UnusableCheckpoint(f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(state, dict):
        raise UnusableCheckpoint(f"holds a {type(state).__name__}, not a training state")
    expected = stamp(config, model)
    if state.get("format") != expected["format"]:
        raise UnusableCheckpoint(f"format version {state.get('format')!r}, this code reads {FORMAT_VERSION}")
    if state.get("config") != expected["config"]:
        raise UnusableCheckpoint("written for another config")
    if state.get("model_keys") != expected["model_keys"]:
        raise UnusableCheckpoint("written for another model (its layers' names or shapes differ)")
    return state


class CheckpointWriter:
    """Writes checkpoints to a :class:`CheckpointStore` in a background thread, one at a time.

    The training thread hands over CPU copies (:func:`cpu_copy`) and goes on; serialising and
    writing the file happen here. A new checkpoint waits for the previous write to finish, so at
    most one is held in memory besides the one being captured. :meth:`close` waits for the last.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnsearch-checkpoint")
        self._pending: Future | None = None

    def submit(self, state: dict[str, Any]) -> None:
        """Write ``state`` (CPU tensors only) after the write before it."""
        self.flush()
        self._pending = self._executor.submit(self._write, state)

    def flush(self) -> None:
        """Wait until the last submitted checkpoint is written (or its write has failed and been logged)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        """Flush, then end the writer's thread."""
        try:
            self.flush()
        finally:
            self._executor.shutdown(wait=True)

    def _write(self, state: dict[str, Any]) -> None:
        try:
            body = io.BytesIO()
            torch.save(state, body)
            body.seek(0)
            self._store.write(body, state["epoch"], state["step"])
        except Exception:  # noqa: BLE001 - a checkpoint that cannot be written must not stop training
            log.warning("checkpoint after epoch %s not written", state.get("epoch"), exc_info=True)
