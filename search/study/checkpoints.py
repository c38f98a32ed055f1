"""A trial's trained weights in Optuna's artifact store.

Kept for studies run with ``--keep-checkpoints`` (``StudySpec.keep_checkpoints``), just
before the trial is told COMPLETE (Optuna records an artifact only on a running trial).
The store is the one :func:`storage.artifact_store_for` gives for the study's storage
URL: next to a SQLite file, ``$CNNSEARCH_ARTIFACTS`` for a server database.
Optuna-dashboard lists the file on the trial's page; ``cnnsearch export`` copies it next
to the recipe.

Cost, measured on 2 shared CPU cores with a small digits model: saving, copying and
recording the ``state_dict`` takes 25-35 ms, against trials of a few seconds. A
learning-curve PNG per trial was measured too and left out: 0.5-0.7 s per trial plus
~2 s to import matplotlib in every worker, for a plot the dashboard (intermediate values)
and the report (``curves`` user attr) already draw from the storage.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import optuna
import torch
from torch import nn

from storage import artifact_store_for
from storage.errors import StorageError
from storage.records import ARTIFACT_ERROR, CHECKPOINT

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
