"""A trial's checkpoints in the study's artifact store: the one it resumes from, and its kept weights.

The store is the one :func:`storage.artifact_store_for` gives for the study's storage
URL: next to a SQLite file, ``$CNNSEARCH_ARTIFACTS`` for a server database (a folder every
worker reaches).

Every trial writes its training state there after each epoch (:class:`TrialCheckpoint`, the
file :mod:`search.trial.resume` describes), under one id per study and *lineage*: a retry of a
dead worker's trial, or the same trial handed back and claimed again, finds the checkpoint its
first attempt wrote and continues from it. The file is removed when the trial ends, unless
``--keep-checkpoints``.

The trained weights are kept for studies run with ``--keep-checkpoints``
(``StudySpec.keep_checkpoints``), just before the trial is told COMPLETE (Optuna records an
artifact only on a running trial). Optuna-dashboard lists the file on the trial's page;
``cnnsearch export`` copies it next to the recipe.

Cost, measured on 2 shared CPU cores with a small digits model: saving, copying and
recording the ``state_dict`` takes 25-35 ms, against trials of a few seconds. A
learning-curve PNG per trial was measured too and left out: 0.5-0.7 s per trial plus
~2 s to import matplotlib in every worker, for a plot the dashboard (intermediate values)
and the report (``curves`` user attr) already draw from the storage.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import optuna
import torch
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial
from torch import nn

from storage import artifact_store_for
from storage.artifacts import WholeFileArtifactStore
from storage.engine import short_reason
from storage.errors import StorageError
from storage.records import ARTIFACT_ERROR, CHECKPOINT, CHECKPOINT_EPOCH, CHECKPOINT_STEP, RESUME_NOTE

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


def storage_url_of(storage: optuna.storages.BaseStorage) -> str | None:
    """The database URL behind a study's storage, or None for storages without one (in-memory)."""
    # Optuna wraps an RDBStorage in its private trial cache inside every Study and Trial;
    # the URL is the RDBStorage's public ``url`` attribute.
    backend = getattr(storage, "_backend", storage)
    url = getattr(backend, "url", None)
    return url if isinstance(url, str) else None


def keep_checkpoint(trial: optuna.Trial, model: nn.Module) -> str | None:
    """Upload ``model``'s ``state_dict`` as an artifact of the running ``trial``; return its id.

    The id is also recorded as the trial's ``checkpoint_artifact`` user attr. A failure to
    keep it (no artifact directory, a full disk) is logged and noted on the trial
    (``artifact_error``) but does not fail the trial: its result stands. Returns None then,
    and for a storage without a URL (no artifact store to put it in).
    """
    url = storage_url_of(trial.storage)
    if url is None:
        log.info("trial %d: storage has no URL, so no artifact store; checkpoint not kept", trial.number)
        return None
    try:
        store = artifact_store_for(url)
        with tempfile.TemporaryDirectory(prefix="cnnsearch-checkpoint-") as tmp:
            checkpoint = Path(tmp) / CHECKPOINT_FILE
            # CPU tensors: the file loads on any machine with torch.load(weights_only=True).
            torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, checkpoint)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(checkpoint), study_or_trial=trial,
                mimetype="application/octet-stream")
    except (OSError, StorageError) as exc:
        log.warning("trial %d: checkpoint not kept: %s", trial.number, exc)
        trial.set_user_attr(ARTIFACT_ERROR, f"{type(exc).__name__}: {exc}")
        return None
    trial.set_user_attr(CHECKPOINT, artifact_id)
    return artifact_id


def lineage(trial: FrozenTrial) -> int:
    """The number of the trial whose training ``trial`` continues: the one a retry copy retries, else its own.

    Optuna's retry callback links a retry copy to the first trial of its line (system attr
    ``failed_trial``), however many times it was retried; a trial handed back as waiting keeps
    its own number. Both find the checkpoint under this number.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial)
    return trial.number if retried is None else retried


def resume_artifact_id(study_name: str, lineage_number: int) -> str:
    """The artifact id of the resume checkpoint of trial ``lineage_number``'s line in study ``study_name``.

    Fixed, so every worker finds it and each write replaces the one before. The name is hashed: a
    study name may hold characters a file name should not.
    """
    return f"resume-{hashlib.sha256(study_name.encode()).hexdigest()[:16]}-trial{lineage_number}.pt"


Resumed = Callable[[int, int, dict[str, list[float]]], None]


class TrialCheckpoint:
    """One trial's resume checkpoint in the study's artifact store (a :class:`search.trial.resume.CheckpointStore`).

    Each complete write records the trial's ``checkpoint_epoch`` and ``checkpoint_step`` (what
    ``cnnsearch status`` shows); a skipped checkpoint, a ``resume_note``. ``on_resume`` is told
    where training continues.
    """

    def __init__(self, trial: optuna.Trial, trial_id: int, store: WholeFileArtifactStore, artifact_id: str,
                 on_resume: Resumed) -> None:
        self._trial, self._trial_id = trial, trial_id
        self.store, self.artifact_id = store, artifact_id
        self._on_resume = on_resume

    def read(self) -> BinaryIO | None:
        try:
            return self.store.open_reader(self.artifact_id)
        except ArtifactNotFound:
            return None

    def write(self, body: BinaryIO, epoch: int, step: int) -> None:
        # On the writer's thread: the storage directly (thread-safe), not the Trial's cache.
        storage = self._trial.storage
        try:
            self.store.write(self.artifact_id, body)
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the training
            log.warning("trial %d: checkpoint after epoch %d not written: %s", self._trial.number, epoch,
                        short_reason(exc))
            return
        try:
            storage.set_trial_user_attr(self._trial_id, CHECKPOINT_EPOCH, epoch)
            storage.set_trial_user_attr(self._trial_id, CHECKPOINT_STEP, step)
        except Exception as exc:  # noqa: BLE001 - nor a lost database: the file is there, a resume finds it
            log.warning("trial %d: checkpoint after epoch %d written, but the study does not say so yet "
                        "(status shows an earlier epoch): %s", self._trial.number, epoch, short_reason(exc))

    def resumed(self, epoch: int, step: int, curves: dict[str, list[float]]) -> None:
        self._on_resume(epoch, step, curves)

    def skipped(self, reason: str) -> None:
        self._trial.set_user_attr(RESUME_NOTE, f"checkpoint skipped, trained from the beginning: {reason}")

    def remove(self) -> None:
        """Remove the checkpoint (the trial has ended and nothing will continue it)."""
        try:
            self.store.remove(self.artifact_id)
        except ArtifactNotFound:
            pass
        except OSError as exc:
            log.warning("trial %d: checkpoint %s not removed: %s", self._trial.number, self.artifact_id, exc)


def trial_checkpoint(trial: optuna.Trial, trial_id: int, lineage_number: int,
                     on_resume: Resumed) -> TrialCheckpoint | None:
    """The resume checkpoint of the running ``trial`` (id ``trial_id``) of line ``lineage_number``.

    None for a storage without a URL (in memory: nothing could resume it) and when the study's
    artifact directory cannot be made (logged: the trial trains without checkpoints).
    """
    url = storage_url_of(trial.storage)
    if url is None:
        return None
    try:
        store = artifact_store_for(url)
    except StorageError as exc:
        log.warning("trial %d trains without checkpoints: %s", trial.number, exc)
        return None
    return TrialCheckpoint(trial, trial_id, store, resume_artifact_id(trial.study.study_name, lineage_number),
                           on_resume)
